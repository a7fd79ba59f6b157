"""trainer.max_time: a wall-clock budget for training and evaluation, summed over the processes a run was
resumed from. The budget is read once at the end of every step; once spent, training ends at that step if it was
evaluated, else after the next step, which is evaluated and saved as at ``max_steps``. The reading a checkpoint
records is the one the run decided on, so that a run resumed from it decides as this one did."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class TimeBudget:
    """``limit`` seconds (None: no budget) of the training loop, ``text`` as trainer.max_time says it.
    ``clock``: seconds from any fixed point (time.perf_counter; a test passes its own)."""

    KEYS = ("elapsed_s", "out_of_time", "max_time_reached")  # its state, saved in the checkpoint's progress

    def __init__(self, limit: float | None, text: str | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.limit, self.text, self.clock = limit, text, clock
        self.elapsed_s = 0.0  # the loop's time so far, the processes resumed from included
        self.out_of_time = False  # spent: training ends at this step if it is evaluated, else the next
        self.max_time_reached = False  # and it has: the budget, not the step limit or early stopping, ended training
        self._start = (clock(), 0.0)  # (the clock when this process's loop started, elapsed_s before it)

    def start(self, step: int, total_steps: int) -> None:
        """Start counting this process's time, after what the processes before it spent; say what the budget
        does, or that it was spent before the resume."""
        if self.limit is None or self.elapsed_s < self.limit:  # no budget, or some left (maybe a larger one)
            self.out_of_time = self.max_time_reached = False
            if self.limit is not None:
                before = f", {fmt_seconds(self.elapsed_s)} of it before the resume" if self.elapsed_s else ""
                log.info("trainer.max_time=%s: training stops once %s of training and evaluation are spent%s (at "
                         "that step if it is evaluated, else after one more)", self.text, fmt_seconds(self.limit),
                         before)
        elif step < total_steps:  # spent before the resume (every rank read the same checkpoint)
            self.out_of_time = True
            log.info("trainer.max_time=%s was spent before the resume (%s): %s", self.text,
                     fmt_seconds(self.elapsed_s),
                     "no training, the test only" if self.max_time_reached else "one more step, evaluated")
        self._start = (self.clock(), self.elapsed_s)

    def elapsed(self) -> float:
        """The loop's time so far, the processes resumed from included."""
        start, before = self._start
        return before + self.clock() - start

    def runs_out(self, now: float) -> bool:
        """Whether the budget is spent by ``now`` (a reading of :meth:`elapsed`), and was not before."""
        return self.limit is not None and not self.out_of_time and now >= self.limit

    def after_step(self, step: int, now: float, late: bool, evaluated: bool, ended_otherwise: bool) -> None:
        """At the end of ``step``: ``late`` (:meth:`runs_out` at ``now``, as the ranks agreed) spends the budget,
        and training ends there if the step was ``evaluated``, else after the next; ``max_time_reached`` says when
        the budget ended it, not ``ended_otherwise`` (by the step limit or early stopping)."""
        if late:
            self.out_of_time = True
            log.info("trainer.max_time=%s spent after step %d (%s): %s", self.text, step, fmt_seconds(now),
                     "training ends" if evaluated else "one more step, evaluated")
        self.max_time_reached = self.out_of_time and evaluated and not ended_otherwise

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed_s = state.get("elapsed_s", 0.0)
        self.out_of_time = state.get("out_of_time", False)
        self.max_time_reached = state.get("max_time_reached", False)


class Stopwatch:
    """This process's wall time since it was made, and the part of it in training and in evaluation (metrics.json's
    ``time``): :meth:`lap` adds the time since the last lap to one of the two, or to neither."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.start = self._last = clock()
        self.spent = {"train": 0.0, "eval": 0.0}

    def lap(self, kind: str | None = None) -> None:
        now = self.clock()
        if kind is not None:
            self.spent[kind] += now - self._last
        self._last = now

    def total(self) -> float:
        return self.clock() - self.start


def fmt_seconds(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{s:02d}s" if minutes >= 60 else f"{minutes}m{s:02d}s"
