"""Checkpoint files: round trip, one clear line for any file that is not one, and checkpoints of older versions."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hydra.utils import get_class

from lstm_train.config import to_container
from lstm_train.errors import ConfigError
from lstm_train.models import count_parameters
from lstm_train.nn import LSTM
from lstm_train.runs.checkpoint import (
    FORMAT,
    atomic_write,
    checkpoint_file,
    load_checkpoint,
    migrate_config,
    resume_file,
    save_checkpoint,
)
from lstm_train.runs.trained import load_trained
from tests import TESTS


class _Opaque:  # an arbitrary Python object: weights_only loading refuses it
    pass


def test_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    config = {"model": {"name": "m"}, "task": {"name": "t"}}
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "config": config, "task": {}})
    state = load_checkpoint(path)
    assert state["format"] == FORMAT and state["config"]["task"] == config["task"]
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


COMPLETE = {"config": {"model": {"name": "classifier"}, "task": {"name": "first_last"}}, "model": {}, "task": {}}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"config": None}, "it has no config"),
        ({"config": {"task": {"name": "first_last"}}}, "it has no config.model"),
        ({"config": {"model": "classifier", "task": {"name": "first_last"}}},
         "its config.model is str 'classifier', not a mapping"),
        ({"config": {"model": {"name": 3}, "task": {"name": "first_last"}}},
         "its config.model.name is int 3, not a string"),
        ({"model": None}, "it has no model"),
        ({"model": {"w": [1.0]}}, "its model is a dict, not a mapping of names to tensors"),
        ({"ema": {"updates": 3}}, "it has no ema.weights"),
        ({"task": [1]}, "its task is a list, not a mapping"),
    ],
    ids=["no-config", "no-model-group", "model-group-a-string", "name-not-a-string", "no-weights", "weights-a-list",
         "ema-without-weights", "task-state-a-list"],
)
def test_an_incomplete_checkpoint_gives_one_line(tmp_path, change, problem):
    path = tmp_path / "x.pt"
    torch.save({"format": FORMAT, **{k: v for k, v in {**COMPLETE, **change}.items() if v is not None}}, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path} is not a complete lstm-train checkpoint: {problem}"


def test_a_complete_checkpoint_passes(tmp_path):
    torch.save({"format": FORMAT, **COMPLETE, "ema": None}, tmp_path / "x.pt")
    assert load_checkpoint(tmp_path / "x.pt")["config"]["model"]["name"] == "classifier"


def _saved_bytes(path):
    save_checkpoint(path, {"model": {"w": torch.zeros(100)}})
    return path.read_bytes()


# ---- checkpoints of older versions -------------------------------------------------------------------------
# What lstm-train wrote at two earlier commits (before model.cell: e9cf0e0; before model.chrono_max_len and
# data-parallel training: 22ac9c8): each run's config and task state as saved, and its weights' shapes.
OLD = sorted((TESTS / "fixtures" / "old_checkpoints").glob("*.json"))


@pytest.mark.parametrize("fixture", OLD, ids=[p.stem for p in OLD])
def test_an_old_checkpoint_loads_through_the_one_migration(fixture, tmp_path, compose_cfg):
    old = json.loads(fixture.read_text())
    weights = {name: torch.zeros(shape) for name, shape in old["parameters"].items()}
    save_checkpoint(tmp_path / "old.pt", {"model": weights, "config": old["config"], "task": old["task"]})
    cfg, task, model = load_trained(tmp_path / "old.pt")  # strict: every weight has its old name and shape
    assert count_parameters(model) == old["num_params"] and task.state_dict() == old["task"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == old["parameters"]
    # the migrated config has exactly today's keys: a key added without a migration entry fails here
    today = to_container(compose_cfg(f"model={cfg.model.name}", f"task={cfg.task.name}"))
    for group in ("model", "task", "trainer"):
        assert set(cfg[group]) == set(today[group]), group
    assert migrate_config(old["config"])["model"]["cell"] == old["config"]["model"].get("cell", "lstm")
    for group in ("optim", "scheduler"):  # the classes it names are found where they are today
        assert get_class(cfg[group]["_target_"]), group


# ---- saving: what a crash, a power cut or a second writer can leave ---------------------------------------------
def test_each_save_has_its_own_temp_file_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    path = tmp_path / "last.pt"
    save_checkpoint(path, {**COMPLETE, "model": {"w": torch.zeros(3)}})
    save_checkpoint(path, {**COMPLETE, "model": {"w": torch.ones(3)}})
    renames = [e for e in events if e[0] == "rename"]
    assert len(renames) == 2 and renames[0][1] != renames[1][1]  # never one shared last.pt.tmp
    for i, (_, tmp, dst) in enumerate(renames):
        at = events.index(renames[i])
        assert dst == str(path) and events[at - 1] == ("fsync", tmp)  # the data is on disk before the rename
        assert events[at + 1] == ("fsync", str(tmp_path))  # and the rename before the save returns
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_two_writers_of_one_checkpoint_never_collide(tmp_path):
    path = tmp_path / "last.pt"

    def write(value: float) -> None:
        for _ in range(20):
            save_checkpoint(path, {**COMPLETE, "model": {"w": torch.full((10_000,), value)}})

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, [1.0, 2.0]))  # before unique temp names: FileNotFoundError on the shared .tmp
    assert load_checkpoint(path)["model"]["w"][0].item() in (1.0, 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {**COMPLETE, "model": {"w": torch.zeros(3)}})

    def fail(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as error:
        atomic_write(path, fail)
    assert error.value.filename == str(path)  # named for the file the user knows, not the temp
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_variants_weights_with_their_cell_tag_load(tmp_path):
    """A variant's state_dict tags its cell with a string entry (so that it never loads as another variant)."""
    weights = LSTM(3, 4, variant="v").state_dict()
    assert any(isinstance(v, str) for v in weights.values())
    save_checkpoint(tmp_path / "v.pt", {**COMPLETE, "model": weights, "ema": {"weights": weights}})
    assert load_checkpoint(tmp_path / "v.pt")["model"].keys() == weights.keys()


def test_a_directory_that_cannot_be_synced_still_saves(tmp_path, monkeypatch):
    """Some file systems (FUSE, network mounts) refuse fsync on a directory: the rename has happened, so the save
    stands."""
    fsync = os.fsync

    def no_dir_sync(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(22, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_sync)
    save_checkpoint(tmp_path / "last.pt", {**COMPLETE, "model": {"w": torch.ones(2)}})
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(2))


def test_a_failed_write_keeps_its_kind_of_error(tmp_path):
    def refuse(f):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(PermissionError) as error:
        atomic_write(tmp_path / "last.pt", refuse)
    assert error.value.filename == str(tmp_path / "last.pt")


# ---- a run dir where a checkpoint is expected -------------------------------------------------------------
def run_dir(root, *saved: str, tested: str | None = None):
    """A run dir as lstm-train leaves it, with the checkpoints ``saved`` (empty files: only names are read) and,
    for a finished run, a metrics.json recording the weights it ``tested``."""
    (root / "checkpoints").mkdir(parents=True)
    for name in saved:
        (root / "checkpoints" / name).write_bytes(b"")
    if tested is not None:
        (root / "metrics.json").write_text(json.dumps({"test": {}, "test_checkpoint": tested}))
    return root


def test_a_run_dir_means_the_checkpoint_it_tested(tmp_path):
    run, notes = run_dir(tmp_path / "run", "last.pt", "best.pt", tested="best"), []
    assert checkpoint_file(run, note=notes.append) == run / "checkpoints/best.pt"
    assert checkpoint_file(run / "checkpoints", note=notes.append) == run / "checkpoints/best.pt"
    assert checkpoint_file(run / "checkpoints/last.pt") == run / "checkpoints/last.pt"  # a file: as it is
    assert checkpoint_file(run, latest=True) == resume_file(str(run)) == run / "checkpoints/last.pt"
    assert notes == []
    unfinished = run_dir(tmp_path / "unfinished", "last.pt", "best.pt")  # no metrics.json yet
    assert checkpoint_file(unfinished, note=notes.append) == unfinished / "checkpoints/best.pt"
    assert notes == []


@pytest.mark.parametrize(("saved", "tested", "why"), [
    (["last.pt"], None, "saved no best.pt"),
    (["last.pt"], "last", "tested its last weights (metrics.json: test_checkpoint last)"),
    (["last.pt", "best.pt"], "last", "tested its last weights (metrics.json: test_checkpoint last)"),
])
def test_a_run_dir_without_the_best_it_tested_means_its_last_pt_and_says_so(tmp_path, saved, tested, why):
    run, notes = run_dir(tmp_path / "run", *saved, tested=tested), []
    assert checkpoint_file(run, note=notes.append) == run / "checkpoints/last.pt"
    assert notes == [f"{run} {why}: using its checkpoints/last.pt"]


def test_a_dir_that_is_no_run_dir_says_what_to_give(tmp_path):
    (tmp_path / "other").mkdir()
    run_dir(tmp_path / "empty")
    cases = {
        (tmp_path / "none", False): f"no checkpoint file at {tmp_path / 'none'} (nothing there); give a run dir or "
        "a checkpoint in one (RUN/checkpoints/best.pt)",
        (tmp_path / "other", False): f"{tmp_path / 'other'} holds no checkpoints/ (not a run dir?); give a run dir "
        "or a .pt file",
        (tmp_path / "empty", False): f"{tmp_path / 'empty/checkpoints'} holds no best.pt or last.pt (the run "
        "stopped before saving one); give a run dir that saved one, or a .pt file",
        (tmp_path / "empty", True): f"{tmp_path / 'empty/checkpoints'} holds no last.pt (the run stopped before "
        "saving one); give a run dir that saved one, or a .pt file",
    }
    run_dir(tmp_path / "sweep/1_optim.lr=0.1", "last.pt")  # lstm-train -m's dir: its jobs are run dirs
    run_dir(tmp_path / "sweep/0_optim.lr=0.2", "last.pt")
    cases[tmp_path / "sweep", False] = f"{tmp_path / 'sweep'} is a sweep dir, not a run dir; give one of its job " \
        f"dirs, such as {tmp_path / 'sweep/0_optim.lr=0.2'}"
    for (path, latest), message in cases.items():
        with pytest.raises(ValueError) as error:
            checkpoint_file(path, latest)
        assert str(error.value) == message
    with pytest.raises(ConfigError, match=r"^trainer\.resume: no checkpoint file at .*none \(nothing there\); "
                       r"give a run dir or a checkpoint in one \(RUN/checkpoints/last\.pt\)$"):
        resume_file(tmp_path / "none")
