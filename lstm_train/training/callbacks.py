"""Code run at points of the training loop from outside it: what a caller adds to a run without changing the
Trainer (an Optuna trial's reports to its study, pruning.py; the tests: a signal in a given step, a clock of
their own, the weights after each step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lstm_train.training.trainer import Trainer


class Callback:
    """Override what is needed; the Trainer calls every callback it was given, in order."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the loop starts its clock (``trainer.budget.clock`` may be replaced here)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimizer step, its counters updated."""

    def on_evaluated(self, trainer: Trainer, final: bool) -> None:
        """After an evaluation and its checkpoint (``final``: the run's last evaluation)."""
