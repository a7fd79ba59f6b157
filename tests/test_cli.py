"""The command line itself, in subprocesses: a 2x2 multirun, and one-line errors for bad configs."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

from lstm_train.config import Config, TrainerConfig, options
from lstm_train.schema import doc
from tests.helpers import ENV, LSTM_TRAIN


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def test_multirun_2x2(tmp_path):
    # The console script, from another working directory.
    proc = run(LSTM_TRAIN, "-m", "debug=fast", "optim.lr=1e-3,3e-3", "model.hidden_size=8,16",
               f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [p.name for p in jobs] == [
        "0_model.hidden_size=8,optim.lr=0.001",
        "1_model.hidden_size=16,optim.lr=0.001",
        "2_model.hidden_size=8,optim.lr=0.003",
        "3_model.hidden_size=16,optim.lr=0.003",
    ]
    for job in jobs:
        assert list(job.glob("events.out.tfevents.*")), job
        assert (job / "checkpoints/last.pt").is_file() and (job / ".hydra/config.yaml").is_file()
        assert (job / "train.log").is_file()
        assert json.loads((job / "metrics.json").read_text())["step"] == 16
    assert "Traceback" not in proc.stderr


# (overrides, the one line expected on stderr); run concurrently to keep the suite quick.
# Through python -m (tests/test_catalogue.py runs its cases, these among them before, through the console script)
BAD = [
    (["model.hidden_size=abc"], "model.hidden_size: Value 'abc' of type 'str' could not be converted to Integer; "
                                "give an integer, e.g. model.hidden_size=64"),
    (["model.hiden_size=3"], "model.hiden_size: unknown key; did you mean model.hidden_size? The keys here are: "
                             "name, backend, hidden_size,"),
    (["model=nope"], "model=nope: no such option; choose one of char, classifier, seq2seq, tagger"),
    (["trainer.resume=/nonexistent/last.pt"], "trainer.resume: no checkpoint file at /nonexistent/last.pt"),
]


def test_bad_configs_fail_with_one_line(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-m", "lstm_train.train", "debug=fast", *overrides,
                          f"hydra.run.dir={tmp_path / str(i)}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for i, (overrides, _) in enumerate(BAD)
    ]
    for i, (proc, (overrides, expected)) in enumerate(zip(procs, BAD, strict=True)):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (overrides, stderr[-2000:])
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (overrides, stderr[-2000:])
        assert lines[0].startswith(f"lstm-train: error: {expected}"), (overrides, lines[0])
        log = tmp_path / str(i) / "train.log"
        if log.exists():  # rejected after Hydra made the run dir: the reason is in its log too
            assert lines[0] in log.read_text(), overrides


@pytest.mark.parametrize("module", [True, False], ids=["python -m", "console script"])
def test_help_lists_the_groups(module):
    proc = run(*([sys.executable, "-m", "lstm_train.train"] if module else [LSTM_TRAIN]), "--help")
    assert proc.returncode == 0, proc.stderr
    for group in ("model", "task", "optim", "scheduler", "trainer", "debug", "experiment"):
        assert f"{group}:" in proc.stdout


def described(help_text: str) -> dict[str, tuple[str, str]]:
    """--help's config section as {dotted key: (value, description)}, a description's wrapped lines joined."""
    keys: dict[str, tuple[str, str]] = {}
    path: list[str] = []
    last = None
    for line in help_text.partition("== Config ==")[2].splitlines()[2:]:
        more = re.fullmatch(r" +# (.*)", line)
        if more and last is not None:
            value, about = keys[last]
            keys[last] = value, f"{about} {more.group(1)}".strip()
            continue
        entry = re.fullmatch(r"( *)([\w]+):(?: (.*?))?(?: +# (.*))?", line)
        if entry is None:
            last = None
            continue
        depth = len(entry.group(1)) // 2
        path[depth:] = [entry.group(2)]
        last = ".".join(path)
        keys[last] = (entry.group(3) or "").strip(), entry.group(4) or ""
    return keys


def test_help_describes_every_key_of_the_options_chosen():
    proc = run(LSTM_TRAIN, "model=tagger", "task=brown_pos", "optim=sgd", "--help")
    assert proc.returncode == 0, proc.stderr
    keys = described(proc.stdout)
    chosen = {"model": options()["model"]["tagger"], "task": options()["task"]["brown_pos"],
              "optim": options()["optim"]["sgd"], "scheduler": options()["scheduler"]["cosine"],
              "trainer": TrainerConfig, "": Config}
    for group, schema in chosen.items():
        for f in dataclasses.fields(schema):
            key = f"{group}.{f.name}".lstrip(".")
            assert keys[key][1].startswith(doc(f)), key
    assert keys["model.char_dim"][0] == "0" and keys["task.tagset"][0] == "base"
    # a choice's values, unless its description names them all
    assert keys["model.variant"][1].endswith(" One of lstm, v, nig, nfg, nog, niaf, noaf, cifg, fgr.")
    assert keys["model.backend"][1] == doc(next(f for f in dataclasses.fields(chosen["model"]) if f.name == "backend"))
    assert keys["trainer.monitor"][0] == "val/${task.monitor}"  # as written: --help resolves nothing
    assert keys["optim.momentum"][0] == "0.9" and "optim.betas" not in keys
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100  # the groups' long lists wrapped too
    assert "\nexperiment: brown_pos, " in proc.stdout and "\n  odyssey_brown_pos, " in proc.stdout


def test_help_resolves_the_values_with_resolve():
    keys = described(run(LSTM_TRAIN, "--help", "--resolve").stdout)
    assert keys["trainer.monitor"] == ("val/acc", doc(next(f for f in dataclasses.fields(TrainerConfig)
                                                            if f.name == "monitor")))
    assert keys["name"][0] == "first_last-classifier" and keys["trainer.num_threads"][0] == "null"


def test_help_with_a_bad_override_is_one_line():
    proc = run(LSTM_TRAIN, "model=tager", "--help")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["lstm-train: error: model=tager: no such option; did you mean model=tagger? "
                                        "Choose one of char, classifier, seq2seq, tagger"]


@pytest.mark.parametrize("flags, expected", [
    (["--hydra-help"], "== Flags =="), (["--cfg", "job"], "trainer:\n  seed: 0"), (["--info", "defaults"],
                                                                                    "Defaults List"),
    (["--hydra-h"], "== Flags =="),  # argparse's unique prefix of a flag: not refused as an unknown option
])
def test_hydras_other_flags_still_work(flags, expected):
    proc = run(LSTM_TRAIN, *flags)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout and "# " not in proc.stdout.partition("trainer:")[2][:200]


def test_version_is_lstm_trains_then_hydras_and_torchs():
    proc = run(LSTM_TRAIN, "--version")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == (f"lstm-train {importlib.metadata.version('lstm-train')} (Hydra {hydra.__version__}, "
                           f"torch {torch.__version__})\n")  # not only "Hydra 1.3.8", as Hydra's own --version
