"""Data-parallel training on torch.distributed: one model, N processes, one run dir.

Two ways in, one trainer (the launch of each: lstm_train/cli/launch.py):
- ``lstm-train trainer.devices=N``: the Hydra job composes the config and makes the run dir, then starts N
  workers itself with torch's elastic launcher (what ``torchrun --standalone`` runs, as a library call) and
  waits for them.
- Started from outside (``torchrun``, ``srun``, submitit tasks: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT in the environment): the processes join one group. Rank 0 alone runs Hydra and sends its
  resolved config and run dir to the others, so that every rank trains the same config into one run dir.

What makes N processes follow the 1-process trajectory: every rank draws the same global batch from the
task's deterministic stream and takes its own contiguous share (:func:`shard`); each rank's loss is scaled
by its share of the batch's loss weight (samples or real tokens), so DDP's average of the gradients is the
gradient of the global batch's mean loss; metrics are sums (:class:`lstm_train.tasks.Metrics`), summed
over ranks (:func:`reduce_metrics`). Rank 0 alone writes events, checkpoints, metrics.json and the log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: a single process is rank 0 of 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun / srun / submitit describe in the environment (1 process if they don't)."""
        if "RANK" not in os.environ and _submitit_tasks() > 1:
            import submitit  # submitit tasks: export RANK, WORLD_SIZE, MASTER_ADDR... from its own environment

            submitit.helpers.TorchDistributedEnvironment().export(overwrite=False)
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def _submitit_tasks() -> int:
    try:
        import submitit
    except ImportError:
        return 1
    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job
        return 1


def init(world: World) -> None:
    """Join the process group (env:// from the launcher): gloo for CPU tensors, nccl for CUDA ones."""
    if world.size > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each process on its own GPU (cuda:LOCAL_RANK); CPU processes share the CPU."""
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


# ---- rank 0 tells the others what to train -------------------------------------------------------------
_announced = False


def announce(payload: dict[str, Any] | None) -> None:
    """Rank 0: send the resolved config and run dir (None: nothing to train, stop) to the other ranks, once."""
    global _announced
    if dist.is_initialized() and not _announced:
        _announced = True
        dist.broadcast_object_list([payload], src=0)


def receive() -> dict[str, Any] | None:
    """Ranks > 0: what rank 0 announced."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- the batch stream, shared out ----------------------------------------------------------------------
def shard(batch: Any, world: World) -> tuple[Any, bool]:
    """This rank's contiguous share of a batch (sizes differ by at most one row), and whether it has any rows.

    Every tensor and list field whose length is the batch size is split; anything else (a flag) is kept.
    A rank left without rows (a batch smaller than the world) gets the batch's first row instead, to run
    the step with a zero weight: DDP needs every rank in every gradient all-reduce.
    """
    if world.size == 1:
        return batch, True
    n = len(batch)
    start, stop = n * world.rank // world.size, n * (world.rank + 1) // world.size
    real = stop > start
    if not real:
        start, stop = 0, 1
    parts = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, Tensor | list) and len(value) == n:
            parts[field.name] = value[start:stop]
    return dataclasses.replace(batch, **parts), real


def reduce_metrics(metrics: Any) -> Any:
    """Sum a Metrics object's counts over the ranks, in place (every number, tensor and list of numbers;
    flags and names are left alone). Metrics hold sums, so the result is the global batch's."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return metrics
    state = vars(metrics)
    names = [k for k, v in state.items() if _is_count(v)]
    flat = [torch.as_tensor(state[k], dtype=torch.float64).detach().flatten() for k in names]
    total = all_reduce_sum(torch.cat([t.cpu() for t in flat])) if flat else None  # counts: on the CPU (gloo)
    offset = 0
    for name, part in zip(names, flat, strict=True):
        chunk = total[offset : offset + part.numel()]
        offset += part.numel()
        old = state[name]
        if isinstance(old, Tensor):
            state[name] = chunk.view(old.shape).to(old.device, old.dtype)
        elif isinstance(old, list):
            state[name] = [type(o)(v) for o, v in zip(old, chunk.tolist(), strict=True)]
        else:
            state[name] = type(old)(chunk.item())
    return metrics


def _is_count(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, Tensor):
        return not value.dtype.is_complex
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    return isinstance(value, int | float)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over ranks, as a new tensor."""
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def agreed_request(signum: int | None, save: bool, late: bool = False) -> tuple[int | None, bool, bool]:
    """On every rank: a stop signal (the highest number if several) and a save request if any rank has one, and
    whether trainer.max_time is spent by rank 0's clock. A signal may reach one process before the others and all
    must act on it after the same step; rank 0's clock decides because rank 0 writes the checkpoints, whose
    recorded time must agree with the decision. One collective for the three."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return signum, save, late
    requests = gather_tensor(torch.tensor([signum or 0, int(save), int(late)]))
    signum, save = requests[:, :2].amax(0).tolist()
    return signum or None, bool(save), bool(requests[0, 2])


def gather_tensor(tensor: Tensor) -> Tensor:
    """Every rank's (same-shaped) ``tensor``, stacked in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.stack(parts)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def peer_gone(error: BaseException) -> bool:
    """Whether a collective failed because another rank's process ended (gloo notices at once, from the closed
    connection; that process's own message says why)."""
    return isinstance(error, RuntimeError) and any(
        phrase in str(error) for phrase in ("Connection closed by peer", "Connection reset by peer"))


PEER_GONE = "another process of this run ended (its own message says why); this one stopped too"


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ---- logging in the workers ------------------------------------------------------------------------------
def setup_worker_logging(world: World, out_dir: str | Path | None) -> None:
    """Hydra's logging does not reach spawned processes: rank 0 logs to the console and appends to the run's
    train.log; the other ranks write nothing to the run dir, only warnings to stderr, prefixed with the rank."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if world.main:
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
        if out_dir is not None:
            handlers.append(logging.FileHandler(Path(out_dir) / "train.log"))
        for handler in handlers:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(handler)
        root.setLevel(logging.INFO)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {world.rank}] %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn goes through the handlers above: prefixed on ranks > 0
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)  # elastic's own INFO and shutdown notes
