"""resume.py's checks of a checkpoint before anything is loaded (whole resumes: tests/runs/test_resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lstm_train.errors import ConfigError
from lstm_train.runs.checkpoint import save_checkpoint
from lstm_train.training.resume import check_resumable, fmt_changes, held_step

CONFIG = {"model": {"name": "m"}, "task": {"name": "t"}, "optim": {}, "scheduler": {}, "trainer": {}}
PROGRESS = {"step": 8, "epoch": 1, "batch_in_epoch": 0, "best": None, "bad_evals": 0, "stopped_early": False,
            "last_val": {}, "last_train": {}, "elapsed_s": 1.0, "out_of_time": False, "max_time_reached": False}


def resumable() -> dict:
    return {"config": CONFIG, "optimizer": {}, "scheduler": None, "progress": dict(PROGRESS), "rng": {},
            "model": {}, "task": {}}


def test_a_checkpoint_lstm_train_writes_is_resumable():
    check_resumable(Path("last.pt"), resumable())
    old = resumable()
    old["progress"] = {"step": 3}  # written before the later progress keys: they start at their defaults
    check_resumable(Path("last.pt"), old)


@pytest.mark.parametrize(("change", "named"), [
    (lambda s: s.pop("optimizer"), "optimizer"),
    (lambda s: s.update(rng=[1, 2]), "rng"),
    (lambda s: s["progress"].update(lr=0.1), "progress.lr"),  # a key no part of the trainer keeps
    (lambda s: s["progress"].pop("step"), "progress.step"),
    (lambda s: s.update(config={**CONFIG, "trainer": None}), "config.trainer"),
])
def test_what_a_resume_lacks_is_named(change, named):
    state = resumable()
    change(state)
    with pytest.raises(ConfigError, match=rf"^trainer.resume: last.pt cannot be resumed: {named} missing or not as "
                                          r"lstm-train writes them; resume from a checkpoints/last.pt written by"):
        check_resumable(Path("last.pt"), state)


def test_the_step_best_pt_holds(tmp_path):
    best = tmp_path / "best.pt"
    assert held_step(best) is None
    save_checkpoint(best, {**resumable(), "model": {"w": torch.zeros(1)}})
    assert held_step(best) == 8
    best.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"best\.pt is not an lstm-train checkpoint \(truncated or not a torch "
                                          r"file\); move it away to resume with the best restarted$"):
        held_step(best)


def test_changes_read_as_the_checkpoints_and_now():
    assert fmt_changes({"optim.lr": (0.1, 0.2), "trainer.monitor": ("val/acc", "val/loss")}) == (
        "optim.lr (checkpoint 0.1, now 0.2), trainer.monitor (checkpoint 'val/acc', now 'val/loss')")
