"""How the console scripts end: quietly, with status 141, when the reader of their stdout has gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_train.errors import BROKEN_PIPE_STATUS
from lstm_train.train import train
from tests.helpers import BIN, ENV, compose_config


def with_reader_gone(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` with its stdout a pipe whose read end is already closed, as ``command | head -1`` is once
    head has read its line: every write meets EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd,
                              timeout=300)
    finally:
        os.close(write)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pipe") / "run"
    train(compose_config("debug=fast"), run)
    return run


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]], ids=" ".join)
def test_lstm_train_stops_quietly_when_its_reader_has_gone(args):
    proc = with_reader_gone(str(BIN / "lstm-train"), *args)
    assert (proc.returncode, proc.stderr) == (BROKEN_PIPE_STATUS, "")


def test_the_tools_stop_quietly_when_their_reader_has_gone(run_dir, tmp_path):
    best = str(run_dir / "checkpoints/best.pt")
    for command in ([BIN / "lstm-predict", best, " ".join(["0.5"] * 80)],
                    [BIN / "lstm-visualize", best, "--out", tmp_path / "plots"]):
        proc = with_reader_gone(*map(str, command))
        assert (proc.returncode, proc.stderr) == (BROKEN_PIPE_STATUS, ""), command


def test_the_sweep_summary_stops_quietly_when_its_reader_has_gone(sweep):
    proc = with_reader_gone(str(BIN / "lstm-sweep-summary"), str(sweep))
    assert proc.returncode == BROKEN_PIPE_STATUS
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


def test_a_reader_that_reads_everything_changes_nothing():
    proc = subprocess.run([BIN / "lstm-train", "--cfg", "job"], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("name: ") and proc.stderr == ""


def test_an_error_line_still_reaches_stderr_when_stdout_is_gone(tmp_path):
    proc = with_reader_gone(sys.executable, "-m", "lstm_train.train", "model.hidden_size=-3", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "lstm-train: error: model.hidden_size: must be > 0, got -3\n"
