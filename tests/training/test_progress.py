"""A run's length in steps, epochs and evaluations, and its counters' state."""

from __future__ import annotations

import pytest

from lstm_train.training.progress import Progress, run_length


@pytest.mark.parametrize(("max_steps", "max_epochs", "every", "expected"), [
    (100, None, None, {"step": 100, "epoch": 13, "eval": 13}),  # 8 steps an epoch: the last one is partial
    (None, 3, None, {"step": 24, "epoch": 3, "eval": 3}),
    (100, 2, None, {"step": 16, "epoch": 2, "eval": 2}),  # whichever comes first
    (20, None, 6, {"step": 20, "epoch": 3, "eval": 4}),  # every 6 steps, and the last
])
def test_the_run_length_is_the_first_limit(max_steps, max_epochs, every, expected):
    assert run_length(max_steps, max_epochs, every, steps_per_epoch=8) == expected


def test_the_counters_load_from_a_checkpoints_progress_and_leave_the_rest():
    progress = Progress()
    progress.load_state_dict({"step": 12, "epoch": 1, "batch_in_epoch": 4, "best": None, "elapsed_s": 3.0})
    assert progress == Progress(step=12, epoch=1, batch_in_epoch=4)
