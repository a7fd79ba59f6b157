"""The time budget (trainer.max_time) and the stopwatch, on a clock the test moves."""

from __future__ import annotations

import logging

import pytest

from lstm_train.training.budget import Stopwatch, TimeBudget, fmt_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0  # any fixed point

    def __call__(self) -> float:
        return self.now


def test_elapsed_counts_this_process_after_the_ones_before_it():
    clock = Clock()
    budget = TimeBudget(60.0, "1m", clock)
    budget.elapsed_s = 20.0  # spent before a resume
    clock.now += 5  # before the loop starts: not counted
    budget.start(step=3, total_steps=10)
    clock.now += 7
    assert budget.elapsed() == 27.0


def test_the_budget_runs_out_once_and_ends_training_at_an_evaluated_step(caplog):
    clock = Clock()
    budget = TimeBudget(10.0, "10s", clock)
    with caplog.at_level(logging.INFO, logger="lstm_train.training.budget"):
        budget.start(0, 100)
        clock.now += 9
        assert not budget.runs_out(budget.elapsed())
        clock.now += 2
        now = budget.elapsed()
        assert budget.runs_out(now)
        budget.after_step(5, now, late=True, evaluated=False, ended_otherwise=False)
        assert budget.out_of_time and not budget.max_time_reached  # one more step, evaluated
        assert not budget.runs_out(budget.elapsed())  # spent once
        budget.after_step(6, budget.elapsed(), late=False, evaluated=True, ended_otherwise=False)
    assert budget.max_time_reached
    assert caplog.messages == [
        "trainer.max_time=10s: training stops once 0m10s of training and evaluation are spent (at that step if it "
        "is evaluated, else after one more)",
        "trainer.max_time=10s spent after step 5 (0m11s): one more step, evaluated"]


def test_the_step_limit_or_early_stopping_is_no_budget_end():
    budget = TimeBudget(1.0, "1", Clock())
    budget.after_step(8, 2.0, late=True, evaluated=True, ended_otherwise=True)
    assert budget.out_of_time and not budget.max_time_reached


def test_no_budget_never_runs_out():
    clock = Clock()
    budget = TimeBudget(None, None, clock)
    budget.start(0, 10)
    clock.now += 1e9
    assert not budget.runs_out(budget.elapsed())


@pytest.mark.parametrize(("reached", "says"), [(False, "one more step, evaluated"),
                                               (True, "no training, the test only")])
def test_a_budget_spent_before_the_resume(caplog, reached, says):
    budget = TimeBudget(10.0, "10s", Clock())
    budget.load_state_dict({"step": 6, "elapsed_s": 12.0, "out_of_time": True, "max_time_reached": reached})
    with caplog.at_level(logging.INFO, logger="lstm_train.training.budget"):
        budget.start(step=6, total_steps=16)
    assert budget.out_of_time and budget.max_time_reached == reached
    assert caplog.messages == [f"trainer.max_time=10s was spent before the resume (0m12s): {says}"]
    larger = TimeBudget(3600.0, "1h", Clock())  # resumed with more time: training goes on
    larger.load_state_dict(budget.state_dict())
    larger.start(step=6, total_steps=16)
    assert not (larger.out_of_time or larger.max_time_reached)


def test_the_state_round_trips_and_an_old_checkpoint_has_none():
    budget = TimeBudget(10.0, "10s", Clock())
    budget.elapsed_s, budget.out_of_time = 4.5, True
    again = TimeBudget(10.0, "10s", Clock())
    again.load_state_dict(budget.state_dict())
    assert again.state_dict() == {"elapsed_s": 4.5, "out_of_time": True, "max_time_reached": False}
    again.load_state_dict({"step": 3})
    assert again.state_dict() == {"elapsed_s": 0.0, "out_of_time": False, "max_time_reached": False}


def test_the_stopwatch_splits_training_from_evaluation():
    clock = Clock()
    watch = Stopwatch(clock)
    clock.now += 1
    watch.lap()  # neither
    clock.now += 2
    watch.lap("train")
    clock.now += 3
    watch.lap("eval")
    assert watch.spent == {"train": 2.0, "eval": 3.0} and watch.total() == 6.0


def test_durations_read_as_minutes_or_hours():
    assert [fmt_seconds(s) for s in (0, 59.6, 61, 3600, 3725)] == ["0m00s", "1m00s", "1m01s", "1h00m00s", "1h02m05s"]
