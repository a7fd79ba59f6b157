"""Where and in how many processes a run trains: the device, and the data-parallel launch.

``trainer.devices=N`` on one machine: :func:`spawn` starts N workers with torch's elastic launcher (torchrun's
engine). A world started from outside (torchrun, srun, submitit): rank 0 runs the Hydra app and announces the
config, every other rank :func:`follow`s it. Either way each rank trains in :func:`run_worker`, which reports an
error or an interruption on one line from rank 0 (lstm_train/cli/report.py). torch.distributed itself (the process
group, the agreement between ranks) is lstm_train/training/distributed.py.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lstm_train.cli.report import describe_os_error, fail, log_to_file, resume_command
from lstm_train.config import to_container, validate
from lstm_train.errors import ConfigError, RunError
from lstm_train.runs.rundir import resume_path
from lstm_train.schema import escaped
from lstm_train.training import distributed
from lstm_train.training.distributed import World
from lstm_train.training.interrupt import Interrupted, raise_on_signals


def resolve_device(name: str) -> torch.device:
    """The device ``trainer.device`` names (``auto``: CUDA if there is one); a ConfigError for one not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device", f"{name} requested but this torch sees no CUDA device")
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError("trainer.device", f"{name} requested but this machine has {count} CUDA device(s): "
                              f"use cuda:0 to cuda:{count - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", "mps requested but not available")
    return torch.device(name)


def check_devices(cfg: DictConfig, world: World) -> None:
    """trainer.devices agrees with a world started from outside."""
    if cfg.trainer.devices not in (1, world.size):
        raise ConfigError("trainer.devices", f"{cfg.trainer.devices}, but the launcher started {world.size} "
                          "processes (WORLD_SIZE); leave trainer.devices at 1 when torchrun or srun starts them")


def spawn(cfg: DictConfig, out_dir: str) -> dict[str, Any]:
    """trainer.devices=N: start N workers on this machine with torch's elastic launcher (torchrun's engine),
    wait for them and return rank 0's metrics. The workers report their own errors; their exit status is ours."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    validate(cfg)  # before starting N processes that would each report the same mistake
    resume_path(cfg.trainer.resume, Path(out_dir))
    if resolve_device(cfg.trainer.device).type == "cuda" and torch.cuda.device_count() < cfg.trainer.devices:
        raise ConfigError("trainer.devices", f"{cfg.trainer.devices} processes on CUDA need as many GPUs; this "
                          f"machine has {torch.cuda.device_count()}")
    launch = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=cfg.trainer.devices, run_id=f"lstm-train-{os.getpid()}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
        shutdown_timeout=300,  # a stopped worker finishes its step and saves before it exits
    )
    payload = {"config": to_container(cfg), "out_dir": out_dir,
               "resume": resume_command(Path(out_dir) / "checkpoints" / "last.pt")}
    # The launcher's own progress notes, and its multi-line report of a worker that failed: the worker said why.
    for name in ("torch.distributed", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return elastic_launch(launch, spawned_worker)(payload)[0]
    except SignalException as e:  # the workers got the signal too, stopped cleanly and said so
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:  # rank 0 printed why, unless a signal killed a worker
        rank, failure = min(e.failures.items())
        code = failure.exitcode
        if code < 0:  # killed by a signal (the OOM killer, say): nothing of ours said so
            last = Path(out_dir) / "checkpoints" / "last.pt"
            saved = f"; {last} holds the last evaluation: resume with: {payload['resume']}" if last.is_file() else ""
            print(f"lstm-train: error: rank {rank}'s process was killed by signal {-code}{saved}", file=sys.stderr)
        sys.exit(128 - code if code < 0 else code)


def spawned_worker(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A process started by :func:`spawn` (its rank and the rendezvous are in the environment)."""
    world = World.from_env()
    raise_on_signals()
    distributed.setup_worker_logging(world, payload["out_dir"])
    cfg = OmegaConf.create(escaped(payload["config"]))
    if cfg.trainer.num_threads is None:  # the cores shared out, as torchrun's OMP_NUM_THREADS=1 does for 2
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return run_worker(cfg, payload["out_dir"], world, payload["resume"])


def follow(world: World) -> None:
    """A rank > 0 started from outside: train what rank 0 announces, into rank 0's run dir."""
    distributed.init(world)
    distributed.setup_worker_logging(world, None)
    payload = distributed.receive()
    if payload is None:  # rank 0 stopped before training, and said why
        distributed.finish()
        sys.exit(1)
    run_worker(OmegaConf.create(escaped(payload["config"])), payload["out_dir"], world, None)


def run_worker(cfg: DictConfig, out_dir: str, world: World, resume: str | None) -> dict[str, Any] | None:
    """Train as one rank; rank 0 reports an error or an interruption on one line, every rank exits with it."""
    from lstm_train.train import train  # the entry, which imports this module

    try:
        return train(cfg, out_dir, world)
    except (ConfigError, FloatingPointError, RunError) as e:
        if world.main:
            fail(f"lstm-train: error: {e}", 2 if isinstance(e, ConfigError) else 1)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except OSError as e:
        if world.main:
            fail(f"lstm-train: error: {describe_os_error(e)}", 1)
        sys.exit(1)
    except RuntimeError as e:  # rank 0 failed to write, say, and ended while this rank waited for it
        if not distributed.peer_gone(e):
            raise
        fail(f"lstm-train: {'error' if world.main else f'rank {world.rank}'}: {distributed.PEER_GONE}", 1)
    except Interrupted as e:
        if world.main:
            message = f"lstm-train: {e}" + (f"; resume with: {resume}" if e.checkpoint and resume else "")
            print(message, file=sys.stderr)
            log_to_file(message)
        sys.exit(e.exit_code)
    finally:
        distributed.finish()
