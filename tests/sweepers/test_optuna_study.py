"""This project's Optuna sweeper (hydra_plugins/lstm_train_sweeper/optuna_study.py): on a stand-in launcher (the
study continued, trial numbers, batches, pruned trials, the search space), and a pruned search from the command
line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.lstm_train_sweeper.optuna_study import OptunaStudySweeper, search_space
from lstm_train.config import ConfigError
from lstm_train.errors import Pruned, RunError
from tests.helpers import LSTM_TRAIN


# ---- the Optuna sweeper, on a stand-in launcher -------------------------------------------------------
class Launcher:
    """Records (first job number, overrides) of each launch; raises KeyboardInterrupt at launch kill_at. Its jobs
    return x, or fail, or are pruned (``outcome``: value, fail, prune, or prune where x < 0.5)."""

    def __init__(self, kill_at: int | None = None, outcome: str = "value") -> None:
        self.launches: list[tuple[int, list]] = []
        self.kill_at, self.outcome = kill_at, outcome

    def launch(self, overrides, initial_job_idx):
        if len(self.launches) == self.kill_at:
            raise KeyboardInterrupt
        self.launches.append((initial_job_idx, list(overrides)))
        return [self.job(dict(o.split("=") for o in ov)) for ov in overrides]

    def job(self, overrides: dict[str, str]) -> JobReturn:
        x = float(overrides["x"])
        if self.outcome == "fail":
            return JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom"))
        if self.outcome == "prune" or (self.outcome == "prune-low" and x < 0.5):
            return JobReturn(status=JobStatus.FAILED, _return_value=Pruned(4, "val/acc", x))
        return JobReturn(status=JobStatus.COMPLETED, _return_value=x)


def run_sweeper(sweep_dir: Path, launcher: Launcher, n_trials: int = 3, n_jobs: int = 1, **options) -> None:
    sweeper = OptunaStudySweeper(**{
        # seeded: every run draws the same xs (unseeded, 6 of them all below 0.5 would fail a test 1 time in 64)
        "sampler": OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0}), "direction": "maximize",
        "storage": f"sqlite:///{sweep_dir}/optuna.db", "study_name": "s", "n_trials": n_trials, "n_jobs": n_jobs,
        "max_failure_rate": 1.0, "params": {"x": "interval(0, 1)"}, **options})
    sweeper.launcher, sweeper.sweep_dir = launcher, sweep_dir  # what setup() sets, without a Hydra app around it
    sweeper.sweep([])


def states(sweep_dir: Path) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name="s", storage=f"sqlite:///{sweep_dir}/optuna.db").trials]


def test_a_killed_study_continues_with_the_missing_trials_only(tmp_path):
    sweep_dir = tmp_path / "not-yet-created"  # the sweeper creates it for the SQLite file
    with pytest.raises(KeyboardInterrupt):
        run_sweeper(sweep_dir, first := Launcher(kill_at=2))
    assert [idx for idx, _ in first.launches] == [0, 1]
    run_sweeper(sweep_dir, second := Launcher())
    # trial 2 was asked, then cut off: it stays RUNNING; one trial is still missing, numbered after it
    assert [idx for idx, _ in second.launches] == [3]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert states(sweep_dir) == ["COMPLETE", "COMPLETE", "RUNNING", "COMPLETE"]
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").best_value == max(
        t.value for t in study.trials if t.value is not None)
    run_sweeper(sweep_dir, third := Launcher())  # the study is complete: nothing to run
    assert third.launches == []
    run_sweeper(sweep_dir, fourth := Launcher(), n_trials=5)  # a bigger budget: two more
    assert [idx for idx, _ in fourth.launches] == [4, 5]


def test_each_job_is_told_its_trial_and_batches_are_n_jobs(tmp_path):
    run_sweeper(tmp_path, launcher := Launcher(), n_trials=5, n_jobs=2)
    assert [(idx, len(overrides)) for idx, overrides in launcher.launches] == [(0, 2), (2, 2), (4, 1)]
    trials = [ov[-1] for _, batch in launcher.launches for ov in batch]
    assert trials == [f"hydra.sweeper.trial={n}" for n in range(5)]  # job N is trial N


def test_a_study_without_a_completed_trial_ends_with_one_line(tmp_path):
    with pytest.raises(RunError, match=r"^no trial of study s completed \(2 failed\); the errors are in "
                                       r".*/sweep_summary\.md: fix their cause, then raise hydra\.sweeper\.n_trials"):
        run_sweeper(tmp_path, Launcher(outcome="fail"), n_trials=2)
    assert states(tmp_path) == ["FAIL", "FAIL"]  # recorded; the search went on


class Failing(Launcher):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def job(self, overrides: dict[str, str]) -> JobReturn:
        return JobReturn(status=JobStatus.FAILED, _return_value=self.error)


@pytest.mark.parametrize(("error", "line"), [
    (ConfigError("model.hidden_size", "must be > 0, got -3"), "model.hidden_size: must be > 0, got -3"),
    (RuntimeError("boom\nmore"), "RuntimeError: boom"),  # unexpected: its type says what happened
])
def test_a_failed_trial_is_logged_as_the_sweep_summary_shows_it(tmp_path, caplog, error, line):
    with pytest.raises(RunError):
        run_sweeper(tmp_path, Failing(error), n_trials=1)
    assert f"Trial 0 failed: {line}" in [r.getMessage() for r in caplog.records]


def test_a_pruned_trial_is_pruned_in_the_study_and_no_failure(tmp_path):
    # max_failure_rate=0: a single failure would stop the search
    run_sweeper(tmp_path, Launcher(outcome="prune-low"), n_trials=6, max_failure_rate=0.0)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 6
    for t in study.trials:
        assert t.state.name == ("PRUNED" if t.params["x"] < 0.5 else "COMPLETE")
    with pytest.raises(RunError, match=r"^no trial of study s completed \(2 pruned\)"):
        run_sweeper(tmp_path / "all", Launcher(outcome="prune"), n_trials=2)


def test_a_pruner_needs_a_storage():
    with pytest.raises(ConfigError, match=r"^hydra\.sweeper\.pruner: a pruner needs the study in a storage"):
        run_sweeper(Path("unused"), Launcher(), storage=None,
                    pruner=OmegaConf.create({"_target_": "optuna.pruners.MedianPruner"}))


def test_the_sweeper_without_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as without the sweep extra: import optuna fails
    with pytest.raises(ConfigError, match=r"^hydra/sweeper: optuna_study needs Optuna, which comes with the sweep "
                                          r"extra: pip install -e '\.\[sweep\]'$"):
        run_sweeper(Path("unused"), Launcher())


def test_the_search_space_in_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space, fixed = search_space(["optim.lr=tag(log, interval(1e-3, 3e-2))", "model.hidden_size=choice(32, 64)",
                                 "model.num_layers=range(1, 4)", "model.dropout=interval(0.0, 0.5)",
                                 "task=first_last,text_char", "debug=fast", "model.num_layers=2"])
    assert space == {
        "optim.lr": FloatDistribution(1e-3, 3e-2, log=True),
        "model.hidden_size": CategoricalDistribution([32, 64]),
        "model.dropout": FloatDistribution(0.0, 0.5),
        "task": CategoricalDistribution(["first_last", "text_char"]),
    }
    assert fixed == ["debug=fast", "model.num_layers=2"]  # the command line's value wins over the search's
    space, _ = search_space(["model.num_layers=range(1, 4)", "x=range(0, 10, 5)", "y=range(0.0, 1.0, 0.25)"])
    assert space == {"model.num_layers": IntDistribution(1, 3), "x": IntDistribution(0, 5, step=5),
                     "y": FloatDistribution(0.0, 0.75, step=0.25)}  # range's end excluded, as in Hydra


def test_a_hopeless_trial_is_pruned_after_saving_last_pt(tmp_path):
    """A median pruner after one trial: trial 0 (lr 0.05) completes, trial 1 (lr 1e-9: it learns nothing) is
    pruned at an evaluation worse than trial 0's there. It keeps its last.pt; the search exits 0."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"optim.lr": 0.05})
    study.enqueue_trial({"optim.lr": 1e-9})
    proc = subprocess.run(
        [LSTM_TRAIN, "-m", "debug=fast", "trainer.max_epochs=4", "hydra/sweeper=optuna_study",
         "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1", "optim.lr=choice(0.05, 1e-9)",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert list(trials[0].intermediate_values) == [8, 16, 24, 32]  # every evaluation (8 steps an epoch) reported
    step = max(trials[1].intermediate_values)
    assert step < 32 and trials[1].value == trials[1].intermediate_values[step]
    rows = {r["job"]: r for r in csv.DictReader((tmp_path / "sweep_summary.csv").open())}
    assert (rows["0"]["status"], rows["1"]["status"], rows["1"]["ended"]) == ("completed", "pruned", "pruned")
    assert int(rows["1"]["steps"]) == step and rows["1"]["best"] != "" and rows["1"]["error"] == ""
    job = next(tmp_path.glob("1_*"))
    assert torch.load(job / "checkpoints/last.pt", weights_only=True)["progress"]["step"] == step
    assert not (job / "metrics.json").exists()
    assert "2 jobs: 1 completed, 1 pruned." in (tmp_path / "sweep_summary.md").read_text()
