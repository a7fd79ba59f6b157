"""The run's checkpoints dir: last.pt then best.pt, rank 0 alone writing, and the best weights for the test."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from lstm_train.runs.checkpoint import load_checkpoint
from lstm_train.training import checkpoints
from lstm_train.training.checkpoints import Checkpoints
from lstm_train.training.distributed import World


def state(step: int, value: float) -> dict:
    return {"model": {"weight": torch.full((2,), value)}, "ema": None, "progress": {"step": step}, "task": {},
            "config": {"model": {"name": "m"}, "task": {"name": "t"}}}


def test_last_is_written_before_best(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda path, state: written.append(path.name))
    saves = Checkpoints(tmp_path, World())
    assert saves.save(state(4, 1.0), improved=True) == tmp_path / "last.pt" == saves.last
    saves.save(state(8, 2.0), improved=False)
    assert written == ["last.pt", "best.pt", "last.pt"]


def test_only_rank_0_writes(tmp_path):
    saves = Checkpoints(tmp_path, World(rank=1, size=2))
    assert saves.save(state(4, 1.0), improved=True) == tmp_path / "last.pt"  # where rank 0 wrote it
    assert not list(tmp_path.iterdir())


def test_the_test_loads_the_best_weights_or_says_why_not(tmp_path, caplog):
    saves = Checkpoints(tmp_path, World())
    saves.save(state(4, 1.0), improved=True)
    saves.save(state(8, 2.0), improved=False)
    assert load_checkpoint(tmp_path / "best.pt")["progress"]["step"] == 4
    model = nn.Module()
    model.register_buffer("weight", torch.zeros(2))
    assert saves.load_best(model, {"step": 4}, torch.device("cpu")) == ("best", None)
    assert model.weight.eq(1.0).all()
    with caplog.at_level(logging.WARNING, logger="lstm_train.training.checkpoints"):
        assert saves.load_best(model, {"step": 8}, torch.device("cpu")) == (
            "last", f"{tmp_path}/best.pt holds step 4, not the best step 8")
        assert saves.load_best(model, None, torch.device("cpu")) == ("last", None)
        (tmp_path / "best.pt").unlink()
        assert saves.load_best(model, {"step": 4}, torch.device("cpu")) == ("last", f"{tmp_path}/best.pt is missing")
    assert caplog.messages == [
        f"{tmp_path}/best.pt holds step 4, not the best step 8: testing the last weights instead",
        "no best yet (no evaluation since the run or its best started): testing the last weights",
        f"{tmp_path}/best.pt is missing: testing the last weights instead"]


@pytest.mark.parametrize("broken", [b"not a checkpoint", None])
def test_an_unreadable_best_pt_is_reported_not_raised(tmp_path, broken):
    saves = Checkpoints(tmp_path, World())
    saves.save(state(4, 1.0), improved=True)
    if broken is not None:
        (tmp_path / "best.pt").write_bytes(broken)
    model = nn.Module()
    model.register_buffer("other", torch.zeros(2))  # not the checkpoint's weights: load_state_dict refuses them
    tested, why = saves.load_best(model, {"step": 4}, torch.device("cpu"))
    assert tested == "last" and why
