"""Sweeps on the real launchers and sweeper, from the command line (slow: several Hydra jobs each):
joblib with two jobs side by side, submitit_local, an Optuna study killed with SIGKILL, then continued, and
pruning in trials that run in the launcher's processes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests import helpers
from tests.helpers import LSTM_TRAIN

pytestmark = pytest.mark.slow

# OMP_NUM_THREADS=2: joblib's workers would otherwise get cpu_count // n_jobs threads from loky itself, and the
# one thread per job these tests check would not be the project's doing.
ENV = {**helpers.ENV, "OMP_NUM_THREADS": "2"}


def lstm_train(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([LSTM_TRAIN, "-m", "debug=fast", *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def statuses(sweep_dir: Path) -> dict[int, dict]:
    return {s["job"]: s for s in (json.loads(p.read_text()) for p in sweep_dir.glob("*/job_status.json"))}


def summary(sweep_dir: Path) -> list[dict]:
    return list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))


def test_joblib_runs_two_jobs_side_by_side_on_one_thread_each(tmp_path):
    lstm_train("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.hidden_size=8,16",
               f"hydra.sweep.dir={tmp_path}")
    jobs = statuses(tmp_path)
    assert sorted(jobs) == [0, 1] and {s["status"] for s in jobs.values()} == {"completed"}
    assert [s["threads"] for s in jobs.values()] == [1, 1]
    assert len({s["pid"] for s in jobs.values()}) == 2  # two worker processes...
    first, second = jobs.values()
    assert first["started"] < second["ended"] and second["started"] < first["ended"]  # ...at the same time
    for job in tmp_path.glob("[01]_*"):
        assert json.loads((job / "metrics.json").read_text())["step"] == 16
    assert {r["status"] for r in summary(tmp_path)} == {"completed"}
    assert (tmp_path / "sweep_summary.png").is_file()


def test_python_m_runs_a_joblib_sweep_as_the_console_script_does(tmp_path):
    # joblib pickles the task function: by reference to lstm_train.train, not by value from __main__.
    proc = subprocess.run([sys.executable, "-m", "lstm_train.train", "-m", "hydra/launcher=joblib", "debug=fast",
                           "optim.lr=0.001,0.003", f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s["status"] for _, s in sorted(statuses(tmp_path).items())] == ["completed", "completed"]


def test_joblib_threads_follow_trainer_num_threads(tmp_path):
    lstm_train("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.num_threads=2", "model.hidden_size=8,16",
               f"hydra.sweep.dir={tmp_path}")
    assert [s["threads"] for s in statuses(tmp_path).values()] == [2, 2]


def test_submitit_local_job(tmp_path):
    lstm_train("hydra/launcher=submitit_local", "model.hidden_size=8", f"hydra.sweep.dir={tmp_path}")
    (job,) = statuses(tmp_path).values()
    assert job["status"] == "completed" and job["threads"] == 1
    assert list((tmp_path / ".submitit").glob("*/*_log.out"))  # submitit ran it as a job of its own
    (row,) = summary(tmp_path)
    assert row["status"] == "completed" and float(row["best"]) > 0 and row["monitor"] == "val/acc"


def test_optuna_study_killed_and_continued(tmp_path):
    """SIGKILL once the first trial has finished; started again on the same sweep dir, the study runs only the
    trials still missing, numbered after the ones it has."""
    args = [LSTM_TRAIN, "-m", "hparams_search=first_last", "debug=fast", "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("*/metrics.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "sweep_summary.csv").exists()  # killed hard: no summary from the sweep itself

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = "first_last-classifier-debug"  # the run name (conf/debug/fast.yaml), which names the study
    before = optuna.load_study(study_name=study, storage=storage).trials
    finished = sum(t.state.is_finished() for t in before)
    assert finished < 3

    out = lstm_train("hparams_search=first_last", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}").stdout
    assert f"{finished} of 3 trials finished, {3 - finished} to run (jobs from #{len(before)} on)" in out
    after = optuna.load_study(study_name=study, storage=storage).trials
    assert len(after) == len(before) + 3 - finished
    assert sum(t.state.name == "COMPLETE" for t in after) == 3
    assert [t.number for t in after[len(before):]] == list(range(len(before), len(after)))
    # every trial that ran has its job dir, numbered as the trial; the summary lists them all. A job may have
    # completed after the study last heard of it (killed between the two): its trial stays RUNNING.
    rows = summary(tmp_path)
    completed = {int(r["job"]) for r in rows if r["status"] == "completed"}
    complete_trials = {t.number for t in after if t.state.name == "COMPLETE"}
    assert complete_trials <= completed and completed - complete_trials <= {t.number for t in before}
    # the job cut off, if its dir was made: died (or unknown, killed before its status file was written)
    assert {r["status"] for r in rows} <= {"completed", "died", "unknown"}


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_trial_in_another_process_reports_and_is_pruned(tmp_path, launcher):
    """The trials run in the launcher's processes, which reach the study through its SQLite file: trial 1
    (lr 1e-9) is pruned there after trial 0 (lr 0.05) completed, and stops with its last.pt saved."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"optim.lr": 0.05})
    study.enqueue_trial({"optim.lr": 1e-9})
    proc = subprocess.Popen(
        [LSTM_TRAIN, "-m", "debug=fast", "trainer.max_epochs=4", f"hydra/launcher={launcher}",
         "hydra/sweeper=optuna_study", "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
         "optim.lr=choice(0.05, 1e-9)", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=s",
         f"hydra.sweep.dir={tmp_path}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert list(trials[0].intermediate_values) == [8, 16, 24, 32]
    jobs = statuses(tmp_path)
    assert [jobs[n]["status"] for n in (0, 1)] == ["completed", "pruned"]
    assert proc.pid not in {s["pid"] for s in jobs.values()}  # the trials ran in processes of their own
    assert next(tmp_path.glob("1_*/checkpoints/last.pt")).is_file()
    assert [r["status"] for r in sorted(summary(tmp_path), key=lambda r: r["job"])] == ["completed", "pruned"]
