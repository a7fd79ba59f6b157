"""What the training steps accumulate between a log and the next, and between evaluations.

The train log: every ``trainer.log_every_n_steps`` steps and at each evaluation, train/loss and train/clipped
(means over the steps since the last log), the logged step's gradient norms (taken before clipping) and learning
rate, to TensorBoard and the progress bar. Only the cheap part runs every step: the loss and the clipping flag
accumulate as tensors (no host sync); the norms per parameter, the one sync and the writes happen on logging
steps. The other train metrics (accuracy...) accumulate from one evaluation to the next, which logs their means.

A checkpoint saves both (its ``interval``), with each rank's RNG and carried task state (a language model's
hidden state): a run stopped between evaluations resumes to the same numbers."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from lstm_train.runs.checkpoint import rng_state, set_rng_state
from lstm_train.tasks import Task, derive_seed
from lstm_train.training import distributed
from lstm_train.training.distributed import World
from lstm_train.training.tracking import Tracker


class IntervalLog:
    """What the steps training ``params`` (name, parameter) on ``task`` accumulated since the last log
    (loss, clipping) and since the last evaluation (``metrics``). Data-parallel, each rank sums its share; the
    log and the evaluation add the ranks' sums up."""

    def __init__(self, params: list[tuple[str, nn.Parameter]], task: Task, device: torch.device,
                 world: World = World()) -> None:  # noqa: B008 (frozen)
        self.params, self.task, self.device, self.world = params, task, device, world
        self.lr = 0.0  # the rate the last step used
        self.metrics = task.new_metrics()  # since the last evaluation
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.clipped = torch.zeros((), device=self.device)
        self.steps = 0
        self.norms: tuple[list[str], list[Tensor]] | None = None

    def take_norms(self) -> None:
        """The gradient norms of this step, to log (before clipping: grad_norm/* are the norms clipping sees)."""
        named = [(name, p.grad) for name, p in self.params if p.grad is not None]
        self.norms = [n for n, _ in named], torch._foreach_norm([g for _, g in named])  # one fused kernel for all

    def add(self, loss: Tensor, clipped: Tensor | None, lr: float) -> None:
        """A step's ``loss`` (this rank's part), whether clipping cut its gradient (None: no clipping) and its rate."""
        self.loss_sum += loss
        if clipped is not None:
            self.clipped += clipped
        self.steps += 1
        self.lr = lr

    def take_metrics(self) -> dict[str, float]:
        """The train metrics since the last evaluation (all ranks'); the next evaluation's start from here."""
        metrics, self.metrics = self.metrics, self.task.new_metrics()
        return distributed.reduce_metrics(metrics).compute()

    def global_loss_sum(self) -> Tensor:
        return self.loss_sum if self.world.size == 1 else distributed.all_reduce_sum(self.loss_sum)

    def write(self, tracker: Tracker, bar: tqdm, step: int) -> None:
        """Log at ``step`` and start a new interval; a FloatingPointError if the loss is not finite."""
        names, norms = self.norms
        norms_t = torch.stack(norms)
        total = torch.linalg.vector_norm(norms_t)  # the same total clip_grad_norm_ computes
        values = torch.cat([(self.global_loss_sum() / self.steps).view(1), total.view(1),
                            (self.clipped / self.steps).view(1), norms_t]).tolist()  # one host sync
        loss, grad_norm, clipped = values[:3]
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged: train/loss is {loss} at step {step}; "
                                     "try a lower optim.lr or trainer.clip_grad_norm")
        scalars = {"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": self.lr, "train/clipped": clipped}
        scalars.update({f"grad_norm/{name}": v for name, v in zip(names, values[3:], strict=True)})
        tracker.scalars(scalars, step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr:.2e}", refresh=False)
        self.reset()

    def state_dict(self) -> dict[str, Any]:
        """The sums over all ranks (rank 0 carries them on after a resume), and each rank's own RNG and carried
        state. On every rank: it gathers what each holds."""
        return {
            "loss_sum": self.global_loss_sum(), "clipped": self.clipped, "steps": self.steps,
            "train_metrics": distributed.reduce_metrics(copy.deepcopy(self.metrics)).state_dict(),
            "ranks": distributed.gather({"rng": rng_state(), "task": self.task.train_state()}),
        }

    def load_state_dict(self, state: dict[str, Any], seed: int, step: int) -> None:
        """``state`` saved at ``step`` of a run with trainer.seed ``seed``, by as many ranks as this run's or not."""
        self.clipped, self.steps = state["clipped"], state["steps"]
        if self.world.main:  # the sums over all ranks; the other ranks start theirs from zero
            self.loss_sum = state["loss_sum"]
            self.metrics.load_state_dict(state["train_metrics"])
        ranks, rank = state["ranks"], self.world.rank
        if len(ranks) == self.world.size:  # each rank goes on with its own rows' state and RNG
            set_rng_state(ranks[rank]["rng"])
            self.task.load_train_state(ranks[rank]["task"])
        elif not self.world.main:  # another world size: rank 0 goes on from rank 0's, the others afresh
            torch.manual_seed(derive_seed("rank", seed, step, rank))
