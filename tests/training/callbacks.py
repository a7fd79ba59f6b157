"""Callbacks the tests pass to train(): a signal sent from inside a given step, a clock of one second per step,
the weights after each step (lstm_train/training/callbacks.py)."""

from __future__ import annotations

import os

from torch import Tensor

from lstm_train.training.callbacks import Callback
from lstm_train.training.trainer import Trainer


class SignalInStep(Callback):
    """Send ``signum`` to this process from inside training step ``step`` (1-based), as a user would mid-step."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.progress.step == self.step:
            os.kill(os.getpid(), self.signum)


class StepClock(Callback):
    """The time budget's clock reads one second per training step."""

    def on_fit_start(self, trainer: Trainer) -> None:
        trainer.budget.clock = lambda: float(trainer.progress.step)


class WeightsAfterEachStep(Callback):
    """The trained weights after each step, in ``self.weights``."""

    def __init__(self) -> None:
        self.weights: list[dict[str, Tensor]] = []

    def on_step_end(self, trainer: Trainer) -> None:
        self.weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
