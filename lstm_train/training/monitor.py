"""trainer.monitor: the best value of a validation metric so far, which picks best.pt, and early stopping."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lstm_train.errors import ConfigError

if TYPE_CHECKING:
    from lstm_train.tasks import Task

log = logging.getLogger(__name__)


def maximizes(monitor: str, mode: str, higher_is_better: Mapping[str, bool]) -> bool:
    """Whether ``monitor`` (val/<metric>) with trainer.monitor_mode ``mode`` is to be maximised: auto is the
    metric's own direction (the task's ``higher_is_better``)."""
    return higher_is_better.get(monitor.removeprefix("val/"), False) if mode == "auto" else mode == "max"


class Monitor:
    """The best evaluation by ``name`` (val/<metric>) in its direction, and the evaluations since: after
    ``patience`` of them (None: never), training stops early."""

    KEYS = ("best", "bad_evals", "stopped_early")  # its state, saved in the checkpoint's progress

    def __init__(self, name: str, maximize: bool, patience: int | None = None) -> None:
        self.name, self.metric = name, name.removeprefix("val/")
        self.maximize, self.patience = maximize, patience
        self.best: dict[str, Any] | None = None  # {"value", "step", "epoch", "val"}
        self.bad_evals = 0  # evaluations since the best one
        self.stopped_early = False

    @classmethod
    def for_task(cls, name: str, mode: str, patience: int | None, task: Task) -> Monitor:
        """trainer.monitor ``name`` with trainer.monitor_mode ``mode``: a ConfigError unless ``task`` has the metric."""
        if name.removeprefix("val/") not in task.metric_names:
            names = ", ".join(f"val/{m}" for m in task.metric_names)
            raise ConfigError("trainer.monitor", f"task {task.name} has no metric {name}; it has {names}")
        return cls(name, maximizes(name, mode, task.higher_is_better), patience)

    @property
    def direction(self) -> str:
        return "max" if self.maximize else "min"

    def update(self, val: dict[str, float], step: int, epoch: int) -> bool:
        """Take in an evaluation's metrics ``val``; True if it is the best so far."""
        value = val[self.metric]
        best = None if self.best is None else self.best["value"]
        improved = best is None or (value > best if self.maximize else value < best)
        if improved:
            self.best = {"value": value, "step": step, "epoch": epoch, "val": val}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            if self.patience and self.bad_evals >= self.patience:
                self.stopped_early = True
                log.info("early stopping: %s has not improved for %d evaluations", self.name, self.patience)
        return improved

    def restart(self) -> None:
        """Forget the best: the next evaluation is the best so far."""
        self.best, self.bad_evals = None, 0

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.bad_evals = state.get("bad_evals", 0)
        self.stopped_early = state.get("stopped_early", False)
