"""Checkpoint files: round trip, and one clear line for any file that is not one."""

from __future__ import annotations

import pytest
import torch

from lstm_train.checkpoint import FORMAT, load_checkpoint, save_checkpoint


class _Opaque:  # an arbitrary Python object: weights_only loading refuses it
    pass


def test_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "config": {"a": 1}})
    state = load_checkpoint(path)
    assert state["format"] == FORMAT and state["config"] == {"a": 1}
    assert torch.equal(state["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no .tmp left behind


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda p: p.write_text("hello world"), "truncated or not a torch file"),
        (lambda p: p.write_bytes(b""), "truncated or not a torch file"),
        (lambda p: torch.save({"a": _Opaque()}, p), "it holds arbitrary Python objects"),
        (lambda p: p.write_bytes(_saved_bytes(p)[:100]), "truncated or not a torch file"),
        (lambda p: torch.save([1, 2], p), f"format {FORMAT}"),
        (lambda p: torch.save({"format": FORMAT + 1}, p), f"format {FORMAT}"),
    ],
    ids=["text", "empty", "objects", "truncated", "list", "other-format"],
)
def test_foreign_files_give_one_line(tmp_path, write, why):
    path = tmp_path / "x.pt"
    write(path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message == f"{path} is not an lstm-train checkpoint ({why})"


def _saved_bytes(path):
    save_checkpoint(path, {"model": {"w": torch.zeros(100)}})
    return path.read_bytes()
