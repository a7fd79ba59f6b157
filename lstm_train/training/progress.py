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
    epoch: int = 0  # the epoch in progress
    batch_in_epoch: int = 0  # its batches done
    last_val: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)

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
