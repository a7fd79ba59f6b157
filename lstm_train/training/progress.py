"""Where a run is: its counters (the step, the epoch, the batch in it) and the last metrics, and how long it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """The counters a checkpoint restores; the monitor's best and the time budget keep their own state
    (:class:`~lstm_train.training.monitor.Monitor`, :class:`~lstm_train.training.budget.TimeBudget`), saved beside
    these under the checkpoint's ``progress``."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress, counted from 0 (the data's seed; users read shown_epoch)
    batch_in_epoch: int = 0  # its batches done
    last_val: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)

    @property
    def shown_epoch(self) -> int:
        """The epoch of the last step done, counted from 1 (0 before the first step): what the log, metrics.json and
        a resume say. At an epoch's end it is the number of epochs done, so trainer.max_epochs=2 ends at epoch 2."""
        return self.epoch + 1 if self.batch_in_epoch else self.epoch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint's ``progress`` (which also holds the monitor's and the budget's keys)."""
        for name in self.__dataclass_fields__:
            if name in state:
                setattr(self, name, state[name])


def run_length(max_steps: int | None, max_epochs: int | None, eval_every_n_steps: int | None,
               steps_per_epoch: int) -> dict[str, int]:
    """The steps, epochs and evaluations of a run with these trainer settings (this run's, or a checkpoint's)."""
    limits = [n for n in (max_steps, max_epochs and max_epochs * steps_per_epoch) if n]
    steps = min(limits)
    epochs = math.ceil(steps / steps_per_epoch)
    return {"step": steps, "epoch": epochs,
            "eval": epochs if eval_every_n_steps is None else math.ceil(steps / eval_every_n_steps)}


def epochs_end_first(max_steps: int | None, max_epochs: int | None, steps_per_epoch: int) -> str | None:
    """What to tell a user who set both limits when the epochs end the run before trainer.max_steps (None if not):
    otherwise a run of max_steps=100 that stops at step 16 looks cut short."""
    if not (max_steps and max_epochs) or max_epochs * steps_per_epoch >= max_steps:
        return None
    epochs = f"{max_epochs} epochs of {steps_per_epoch} steps end" if max_epochs > 1 else \
        f"1 epoch of {steps_per_epoch} steps ends"
    return (f"trainer: {epochs} the run at step {max_epochs * steps_per_epoch}, before trainer.max_steps={max_steps} "
            "(trainer.max_epochs=null to train to it)")
