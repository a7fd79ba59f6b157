"""Optimizers and learning-rate schedulers from conf/optim/ and conf/scheduler/."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lstm_train.config import to_container
from lstm_train.errors import ConfigError


def build_optimizer(cfg: Mapping[str, Any], params: Iterable[torch.nn.Parameter]) -> Optimizer:
    try:
        # _convert_="all": plain lists in the optimizer's state dict, which torch.load(weights_only=True) reads.
        return instantiate(cfg, _convert_="all")(params)
    except (InstantiationException, TypeError, ValueError) as e:
        raise _instantiation_error("optim", e) from e


def optimizer_state_keys(cfg: Mapping[str, Any]) -> set[str]:
    """What the optimizer ``cfg`` builds keeps per parameter (Adam: step, exp_avg, exp_avg_sq; with amsgrad also
    max_exp_avg_sq): a checkpoint's state fits it only with the same keys. Read from one step on a scalar."""
    weight = torch.zeros(1, requires_grad=True)
    weight.grad = torch.zeros(1)
    optimizer = build_optimizer(cfg, [weight])
    optimizer.step()
    return set(optimizer.state[weight])


def _instantiation_error(group: str, error: Exception) -> ConfigError:
    message = str(error).splitlines()[0].split(", set env var HYDRA_FULL_ERROR")[0]
    return ConfigError(f"{group}._target_" if message.startswith("Error locating target") else group, message)


class WarmupCosineLR(LRScheduler):
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x the base lr at ``total_steps``.

    A closed form of the step count, so resuming from a state dict lands on exactly the same values.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


class Scheduler:
    """A learning-rate scheduler and when the trainer steps it (``interval``: step, epoch or eval)."""

    def __init__(self, cfg: Mapping[str, Any], optimizer: Optimizer, run_length: dict[str, int],
                 mode: str = "min") -> None:
        """``run_length``: the run's steps, epochs and evaluations; ``mode``: min or max, the direction of the
        monitored metric (for ReduceLROnPlateau)."""
        self.settings = self.resolve(cfg, run_length)
        kwargs = dict(self.settings)
        self.interval: str = kwargs.pop("interval")
        self.length = run_length.get(self.interval)
        self.scheduler: LRScheduler | ReduceLROnPlateau | None = None
        if kwargs["_target_"] is None:
            return
        try:
            make = instantiate(kwargs)  # a functools.partial of the scheduler class
            if issubclass(make.func, ReduceLROnPlateau):
                make = partial(make, mode=mode)
            self.scheduler = make(optimizer)
        except (InstantiationException, TypeError, ValueError) as e:
            raise _instantiation_error("scheduler", e) from e

    @staticmethod
    def resolve(cfg: Mapping[str, Any], run_length: dict[str, int]) -> dict[str, Any]:
        """The scheduler's arguments as this run uses them (``total_steps: null`` is the run's length): two runs
        whose settings are equal have the same schedule."""
        kwargs = dict(to_container(cfg)) if isinstance(cfg, DictConfig) else dict(cfg)
        if "total_steps" in kwargs and kwargs["total_steps"] is None:
            kwargs["total_steps"] = run_length[kwargs["interval"]]  # null: the whole run
        return kwargs

    @property
    def adaptive(self) -> bool:
        """A schedule driven by the monitored metric (ReduceLROnPlateau), not by the count of its steps."""
        return isinstance(self.scheduler, ReduceLROnPlateau)

    def fast_forward(self, count: int) -> None:
        """Step a fresh schedule ``count`` times, to where a run with it from the start would be (the same
        operations, so the same rates); a metric-driven schedule has no such place and starts where it is."""
        if self.scheduler is None or self.adaptive:
            return
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore")
            for _ in range(count):
                self.scheduler.step()

    def describe(self, lr: float) -> str:
        """The schedule in a few words, for the log: ``lr`` is the optimizer's current rate."""
        if self.scheduler is None:
            return f"a constant lr of {lr:.4g}"
        args = ", ".join(f"{k}={v}" for k, v in self.settings.items() if not k.startswith("_") and k != "interval")
        if self.adaptive:
            return f"{type(self.scheduler).__name__}({args}) after each {self.interval}, lr now {lr:.4g}"
        done = self.scheduler.last_epoch
        return (f"{type(self.scheduler).__name__}({args}) per {self.interval}, at {done} of the run's "
                f"{self.length}, lr now {lr:.4g}")

    def step(self, interval: str, metric: float | None = None) -> None:
        if self.scheduler is None or interval != self.interval:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)
