"""The monitor: the best evaluation in the metric's direction, patience and early stopping, its state."""

from __future__ import annotations

import logging

import pytest

from lstm_train.errors import ConfigError
from lstm_train.tasks import build_task
from lstm_train.training.monitor import Monitor, maximizes


def test_the_direction_is_the_mode_or_with_auto_the_metrics_own():
    higher = {"acc": True, "loss": False}
    assert maximizes("val/acc", "auto", higher) and not maximizes("val/loss", "auto", higher)
    assert maximizes("val/loss", "max", higher) and not maximizes("val/acc", "min", higher)
    assert Monitor("val/acc", True).direction == "max" and Monitor("val/loss", False).direction == "min"


@pytest.mark.parametrize(("maximize", "values", "improved", "best"), [
    (True, [0.5, 0.7, 0.6, 0.7, 0.8], [True, True, False, False, True], 4),  # a tie is no improvement
    (False, [0.5, 0.7, 0.4, 0.4], [True, False, True, False], 2),
])
def test_the_best_is_the_first_of_the_best_values(maximize, values, improved, best):
    monitor = Monitor("val/acc", maximize)
    assert [monitor.update({"acc": v, "loss": 1.0}, step, 0) for step, v in enumerate(values)] == improved
    assert monitor.best == {"value": values[best], "step": best, "epoch": 0, "val": {"acc": values[best], "loss": 1.0}}


def test_patience_counts_evaluations_since_the_best_and_stops_early(caplog):
    monitor = Monitor("val/loss", False, patience=2)
    with caplog.at_level(logging.INFO, logger="lstm_train.training.monitor"):
        monitor.update({"loss": 1.0}, 1, 0)
        monitor.update({"loss": 2.0}, 2, 0)
        assert (monitor.bad_evals, monitor.stopped_early) == (1, False)
        monitor.update({"loss": 0.5}, 3, 0)  # an improvement starts the count again
        assert monitor.bad_evals == 0
        monitor.update({"loss": 0.6}, 4, 1)
        monitor.update({"loss": 0.7}, 5, 1)
    assert (monitor.bad_evals, monitor.stopped_early) == (2, True)
    assert caplog.messages == ["early stopping: val/loss has not improved for 2 evaluations"]
    never = Monitor("val/loss", False, patience=None)
    for step in range(5):
        never.update({"loss": 1.0}, step, 0)
    assert not never.stopped_early


def test_the_state_round_trips_and_a_restart_forgets_the_best():
    monitor = Monitor("val/acc", True, patience=3)
    monitor.update({"acc": 0.9}, 4, 1)
    monitor.update({"acc": 0.8}, 8, 2)
    again = Monitor("val/acc", True, patience=3)
    again.load_state_dict(monitor.state_dict())
    assert again.state_dict() == monitor.state_dict() == {
        "best": {"value": 0.9, "step": 4, "epoch": 1, "val": {"acc": 0.9}}, "bad_evals": 1, "stopped_early": False}
    again.restart()
    assert again.best is None and again.bad_evals == 0
    assert again.update({"acc": 0.1}, 9, 2)  # the next evaluation is the best so far
    old = Monitor("val/acc", True)
    old.load_state_dict({"step": 3})  # a checkpoint's progress from before the monitor's keys
    assert (old.best, old.bad_evals, old.stopped_early) == (None, 0, False)


def test_a_metric_the_task_lacks_is_a_config_error(compose_cfg):
    task = build_task(compose_cfg("debug=fast").task)
    assert Monitor.for_task("val/acc", "auto", None, task).maximize
    with pytest.raises(ConfigError, match=r"^trainer.monitor: task first_last has no metric val/f1; it has val/loss, "
                                          r"val/acc$"):
        Monitor.for_task("val/f1", "auto", None, task)
