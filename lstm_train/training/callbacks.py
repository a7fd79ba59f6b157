"""Code run at points of the training loop from outside it: what a caller adds to a run without changing the
Trainer (the tests: a signal in a given step, a clock of their own, the weights after each step)."""

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
