"""Provenance and rerun: every run dir records how it was made (provenance.yaml), and ``lstm-train --rerun RUN_DIR``
trains it again, to the same numbers on CPU, warning where the code or the versions differ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from lstm_train.runs import provenance
from tests.catalogue_driver import run
from tests.helpers import ENV, LSTM_TRAIN

QUICK = ["debug=fast", "trainer.progress_bar=false", "trainer.num_threads=1"]


def lstm_train(*args: str | Path) -> None:
    """The console script's main, in this process."""
    result = run("lstm-train", [str(a) for a in args])
    assert result["code"] == 0 and result["traceback"] is None, result


def warnings_of(run_dir: Path) -> list[str]:
    return [line.partition(" - ")[2] for line in (run_dir / "train.log").read_text().splitlines()
            if "[lstm_train.runs.provenance][WARNING]" in line]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A run of the console script with a config override and a group override."""
    run_dir = tmp_path_factory.mktemp("original") / "run"
    lstm_train(*QUICK, "model.hidden_size=12", "optim=adamw", f"hydra.run.dir={run_dir}")
    return run_dir


def test_a_run_records_its_command_code_versions_and_machine(original):
    record = provenance.load(original)
    assert record["command"].endswith(f"hydra.run.dir={original}")
    assert "model.hidden_size=12 optim=adamw" in record["command"]
    assert record["cwd"] == os.getcwd()
    head = subprocess.run(["git", "-C", str(provenance.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the tests run from a checkout
        assert record["git"]["commit"] == head.stdout.strip()
        assert isinstance(record["git"]["dirty"], bool)
        assert (original / provenance.DIFF).is_file() == record["git"]["dirty"]
    assert record["versions"]["torch"] == str(torch.__version__)
    assert {"python", "lstm-train", "hydra-core", "omegaconf"} <= set(record["versions"])
    assert record["machine"]["torch_threads"] == 1
    assert record["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "resumes" not in record and "rerun_of" not in record


def test_a_rerun_in_a_new_process_ends_with_the_same_metrics(tmp_path):
    runs = {name: tmp_path / name for name in ("original", "rerun")}
    for args in ([*QUICK, "model.hidden_size=12", "trainer.seed=3"], ["--rerun", runs["original"]]):
        name = "rerun" if args[0] == "--rerun" else "original"
        proc = subprocess.run([LSTM_TRAIN, *map(str, args), f"hydra.run.dir={runs[name]}"], env=ENV, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    original, rerun = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("original", "rerun"))
    assert rerun["test"] == original["test"] and rerun["train"]["loss"] == original["train"]["loss"]
    assert rerun["best"] == original["best"]
    assert warnings_of(runs["rerun"]) == []  # the same code and versions
    assert provenance.load(runs["rerun"])["rerun_of"] == str(runs["original"].resolve())


def test_overrides_go_on_top_of_the_recorded_config(original, tmp_path, capsys):
    # The recorded config wins over today's conf/: a value no override set, changed in the checkpoint as if the
    # default had changed since the run.
    source = tmp_path / "source"
    shutil.copytree(original, source)
    state = torch.load(source / "checkpoints/last.pt", weights_only=True)
    state["config"]["model"]["forget_bias"] = 1.5
    torch.save(state, source / "checkpoints/last.pt")
    capsys.readouterr()
    lstm_train("--rerun", source, "--cfg", "job", "optim=sgd", "trainer.max_steps=5")
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["model"]["forget_bias"] == 1.5 and job["model"]["hidden_size"] == 12  # as recorded
    assert job["optim"]["_target_"] == "torch.optim.SGD" and job["optim"]["lr"] == 0.1  # sgd's own, not adamw's lr
    assert job["trainer"]["max_steps"] == 5 and job["trainer"]["resume"] is None


def test_a_run_without_checkpoint_or_provenance_reruns_from_its_hydra_dir_with_a_warning(original, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(original, source, ignore=shutil.ignore_patterns("checkpoints", "provenance.*"))
    lstm_train("--rerun", source, f"hydra.run.dir={tmp_path / 'rerun'}", "trainer.max_steps=4")
    config = yaml.safe_load((tmp_path / "rerun/.hydra/config.yaml").read_text())
    assert config["model"]["hidden_size"] == 12 and config["optim"]["_target_"] == "torch.optim.AdamW"
    assert warnings_of(tmp_path / "rerun") == [
        f"{source} has no provenance.yaml (a run from before lstm-train recorded one): the code and versions it "
        "ran with are unknown, so this rerun may differ"]


def test_a_rerun_warns_one_line_for_each_version_and_code_difference(original, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(original, source)
    record = provenance.load(source)
    record["versions"]["torch"] = "1.0.0"
    record["versions"]["hydra-unheard-of"] = "0.1"
    record["git"]["commit"] = "0" * 40
    record["machine"]["gpus"] = ["NVIDIA H100", "NVIDIA H100"]
    (source / provenance.FILE).write_text(yaml.safe_dump(record, sort_keys=False))
    rerun = tmp_path / "rerun"
    lstm_train("--rerun", source, f"hydra.run.dir={rerun}", "trainer.max_steps=4")
    assert warnings_of(rerun) == [
        f"{source} ran with torch 1.0.0, this rerun with {torch.__version__}",
        f"{source} ran with hydra-unheard-of 0.1, this rerun with not installed",
        f"{source} ran the code at commit {'0' * 40}, this rerun at {provenance.load(rerun)['git']['commit']}",
        f"{source} ran with GPUs: NVIDIA H100, NVIDIA H100, this rerun with none (floating-point results may differ)",
    ]


@pytest.mark.parametrize(("then", "now", "expected"), [
    (False, True, "{d} ran with no uncommitted changes, this rerun with some (git diff HEAD)"),
    (True, False, "{d} ran with uncommitted changes ({d}/provenance.diff), this rerun with none (git apply "
                  "{d}/provenance.diff to have them)"),
    (True, True, "{d} ran with other uncommitted changes ({d}/provenance.diff) than this rerun's (git diff HEAD)"),
    (True, "same", None),
])
def test_a_dirty_tree_is_compared_by_its_diff(tmp_path, then, now, expected):
    record, _ = provenance.gather(["lstm-train"], 1)
    record["git"] = {"commit": "abc", "branch": "main", "dirty": then}
    (tmp_path / provenance.FILE).write_text(yaml.safe_dump(record))
    (tmp_path / provenance.DIFF).write_text("the diff then\n")
    current = {**record, "git": {**record["git"], "dirty": now is not False}}
    diff = {"same": "the diff then\n", True: "another diff\n", False: None}[now]
    lines = provenance.differences(tmp_path, current, diff)
    assert lines == ([expected.format(d=tmp_path)] if expected else [])


def test_a_resume_appends_itself_and_keeps_the_original_record(tmp_path):
    run_dir = tmp_path / "run"
    lstm_train(*QUICK, "trainer.max_steps=4", f"hydra.run.dir={run_dir}")
    first = (run_dir / provenance.FILE).read_text()
    lstm_train(*QUICK, "trainer.max_steps=8", "trainer.resume=auto", f"hydra.run.dir={run_dir}")
    assert (run_dir / provenance.FILE).read_text().startswith(first)
    record = provenance.load(run_dir)
    assert "trainer.max_steps=4" in record["command"]
    [resume] = record["resumes"]
    assert "trainer.max_steps=8 trainer.resume=auto" in resume["command"]
    assert (run_dir / "provenance.resume1.diff").is_file() == (resume["git"]["dirty"] is True)
    lstm_train("--rerun", run_dir, f"hydra.run.dir={tmp_path / 'rerun'}")
    assert warnings_of(tmp_path / "rerun") == [
        f"{run_dir} was resumed 1 time(s) (its provenance.yaml lists each start); this rerun trains it in one go, "
        "with its last start's config"]


def test_a_run_started_from_another_runs_checkpoint_starts_from_it_again(tmp_path):
    lstm_train(*QUICK, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'first'}")
    lstm_train(*QUICK, "trainer.max_steps=8", f"trainer.resume={tmp_path / 'first/checkpoints/last.pt'}",
               f"hydra.run.dir={tmp_path / 'then'}")
    lstm_train("--rerun", tmp_path / "then", f"hydra.run.dir={tmp_path / 'rerun'}")
    original, rerun = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("then", "rerun"))
    assert rerun["test"] == original["test"] and rerun["train"] == original["train"]


def test_a_job_of_a_sweep_reruns_as_one_run(tmp_path):
    lstm_train("-m", *QUICK, "trainer.max_steps=4", "trainer.seed=5,6", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    [job] = (tmp_path / "sweep").glob("1_*")
    lstm_train("--rerun", job, f"hydra.run.dir={tmp_path / 'rerun'}")
    original, rerun = (json.loads((d / "metrics.json").read_text()) for d in (job, tmp_path / "rerun"))
    assert rerun["test"] == original["test"] and rerun["train"] == original["train"]
    assert yaml.safe_load((tmp_path / "rerun/.hydra/config.yaml").read_text())["trainer"]["seed"] == 6


def test_gathering_never_fails_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # not a git checkout
    unknown = {"commit": "unknown", "branch": "unknown", "dirty": "unknown"}
    assert provenance.gather(["lstm-train"], 1)[0]["git"] == unknown
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    record, diff = provenance.gather(["lstm-train"], 1)
    assert record["git"] == unknown and diff is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_detached_head_records_its_commit_and_an_unknown_branch(tmp_path, monkeypatch):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    git("add", "a.txt")
    git("commit", "-qm", "a")
    git("checkout", "-q", "--detach")
    (tmp_path / "a.txt").write_text("b\n")
    (tmp_path / "new.txt").write_text("new\n")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    record, diff = provenance.gather(["lstm-train"], 1)
    assert record["git"] == {"commit": git("rev-parse", "HEAD"), "branch": "unknown", "dirty": True,
                             "diff": "provenance.diff", "untracked": ["new.txt"]}
    assert "-a\n+b\n" in diff


def test_help_names_rerun(capsys):
    assert run("lstm-train", ["--help"])["code"] == 0
    assert "lstm-train --rerun RUN_DIR" in capsys.readouterr().out
