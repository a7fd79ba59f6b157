"""lstm_train.runs.jobs: a sweep dir's jobs read back: the status of a job whose end was never recorded, and
job dirs of another shape than lstm-train's, skipped and named."""

from __future__ import annotations

import csv
import socket

import pytest

from lstm_train.errors import ConfigError, RunError
from lstm_train.runs.jobs import collect, one_line
from lstm_train.runs.sweep import main
from tests.helpers import make_job, odd_jobs


def test_a_job_on_another_host_without_an_end_is_unknown(tmp_path):
    make_job(tmp_path, 0, ["optim.lr=0.1"], status={"status": "running", "host": "node042", "pid": 1, "started": 0.0})
    make_job(tmp_path, 1, ["optim.lr=0.2"], status={"status": "running", "host": socket.gethostname(), "started": 0.0})
    assert [j.status for j in collect(tmp_path)[0]] == ["unknown", "unknown"]  # the second: no pid to look for


def test_odd_job_dirs_are_skipped_and_named(sweep, capsys, caplog):
    skipped = odd_jobs(sweep)
    jobs, found = collect(sweep)
    assert list(found.items()) == list(skipped.items())  # in job order
    assert [j.num for j in jobs] == [0, 1, 2, 3, 4, 5]  # the rest, as without the odd ones
    main([str(sweep)])
    out = capsys.readouterr().out
    assert "6 jobs: 3 completed, 1 failed, 1 died, 1 running." in out
    assert "Skipped 6 job dirs that could not be read:" in out
    for name, why in skipped.items():
        assert f"- `{name}`: {why}\n" in out
        assert f"skipped job dir {sweep / name}: {why}" in caplog.text  # one line each in the log (or on stderr)
    assert [r["job"] for r in csv.DictReader((sweep / "sweep_summary.csv").open())] == ["1", "3", "0", "2", "4", "5"]


def test_a_sweep_dir_of_odd_job_dirs_only_is_one_line(tmp_path, capsys):
    (make_job(tmp_path, 0, ["optim.lr=1"]) / ".hydra/hydra.yaml").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lstm-sweep-summary: error: {tmp_path}: none of its 1 job dirs could be read (0_optim.lr=1: "
        ".hydra/hydra.yaml holds no job number (hydra.job.num))")


@pytest.mark.parametrize(("error", "line"), [
    # lstm-train's own reports read as lstm-train: error: ... shows them, without a class name
    (ConfigError("model.hidden_size", "must be > 0, got -3"), "model.hidden_size: must be > 0, got -3"),
    (RunError("best.pt is missing, so the test used the last weights\n..."),
     "best.pt is missing, so the test used the last weights"),
    (FloatingPointError("training diverged: train/loss is nan at step 20"),
     "training diverged: train/loss is nan at step 20"),
    # anything else is unexpected: its type says what happened
    (RuntimeError("boom\nmore"), "RuntimeError: boom"), (KeyError("x"), "KeyError: 'x'"), (ValueError(), "ValueError"),
])
def test_a_failed_jobs_error_reads_as_lstm_train_shows_it(error, line):
    assert one_line(error) == line
