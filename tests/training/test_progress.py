"""A run's length in steps, epochs and evaluations, and its counters' state."""

from __future__ import annotations

import pytest

from lstm_train.training.progress import Progress, epochs_end_first, run_length


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


@pytest.mark.parametrize(("step", "epoch", "batch_in_epoch", "shown"), [
    (0, 0, 0, 0), (3, 0, 3, 1), (8, 1, 0, 1), (12, 1, 4, 2), (16, 2, 0, 2),  # 8 steps an epoch
])
def test_the_epoch_shown_is_the_last_steps_counted_from_1(step, epoch, batch_in_epoch, shown):
    assert Progress(step=step, epoch=epoch, batch_in_epoch=batch_in_epoch).shown_epoch == shown


@pytest.mark.parametrize(("max_steps", "max_epochs", "expected"), [
    (100, 2, "trainer: 2 epochs of 8 steps end the run at step 16, before trainer.max_steps=100 "
             "(trainer.max_epochs=null to train to it)"),
    (100, 1, "trainer: 1 epoch of 8 steps ends the run at step 8, before trainer.max_steps=100 "
             "(trainer.max_epochs=null to train to it)"),
    (16, 2, None), (10, 2, None), (None, 2, None), (100, None, None),  # the steps end it, or one limit alone
])
def test_epochs_that_end_the_run_before_max_steps_are_told(max_steps, max_epochs, expected):
    assert epochs_end_first(max_steps, max_epochs, steps_per_epoch=8) == expected
