"""Sweeps, the quick part: the SweepSummary callback (job status; the summary at the sweep's end) and
lstm-sweep-summary, Optuna's direction, the launcher and sweeper configs, threads per job, and a multirun with a
failed job from the command line. What the summary is made of: tests/runs/test_jobs.py, test_summary.py and
test_replicates.py; tests/runs/test_sweep_launchers.py runs the real launchers (slow); tests/sweepers/ the
sweepers."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import MissingConfigException
from hydra.types import RunMode

from lstm_train.config import ConfigError, describe_config_error, monitor_direction, threads_per_job, validate
from lstm_train.models import build_model
from lstm_train.nn.variants import VARIANTS
from lstm_train.runs.jobs import STATUS_FILE, collect
from lstm_train.runs.sweep import SweepSummary, main
from lstm_train.tasks import build_task
from tests import ROOT
from tests.helpers import LSTM_TRAIN, job_config, make_job, odd_jobs


# ---- the summary at a sweep's end, and lstm-sweep-summary -------------------------------------------------
def test_the_callback_summarises_despite_odd_job_dirs(sweep):
    odd_jobs(sweep)
    callback = SweepSummary()
    callback.sweep_dir = sweep
    callback._summarize()  # what on_multirun_end and the exit hook run
    assert "Skipped 6 job dirs" in (sweep / "sweep_summary.md").read_text()


def test_lstm_sweep_summary_command(sweep, tmp_path, capsys):
    main([str(sweep)])
    out = capsys.readouterr()
    assert out.out.startswith(f"# Sweep {sweep.name}") and "sweep_summary.png" in out.err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"lstm-sweep-summary: error: no directory at {tmp_path / 'nowhere'}"
    # the console script pyproject installs
    proc = subprocess.run([str(Path(sys.executable).with_name("lstm-sweep-summary")), str(sweep / ".submitit")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "holds no job dirs" in proc.stderr
    # and as a module, as the docs' other tools run
    proc = subprocess.run([sys.executable, "-m", "lstm_train.runs.sweep", str(sweep)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"# Sweep {sweep.name}"), proc.stderr[-2000:]


# ---- the callback in a job: its status, and a job lstm-train refuses ---------------------------------------


REFUSED = ConfigError("hydra.run.dir", "X already holds a run's checkpoints (last.pt, best.pt), which this run would "
                      "overwrite")


def test_a_refused_job_leaves_its_dir_as_it_was(tmp_path):
    """A finished sweep run again into its sweep dir: lstm-train refuses each job (its dir holds a run's
    checkpoints); the callback must not turn the job's completed status into running, then failed."""
    job = make_job(tmp_path, 0, ["optim.lr=0.1"], best=0.9, status={"status": "completed", "host": "h", "pid": 1,
                                                                     "started": 0.0, "wall_s": 4.5})
    (job / "checkpoints").mkdir()
    (job / "checkpoints/last.pt").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in job.iterdir() if p.is_file()}
    callback = SweepSummary()
    callback.on_job_start(job_config(job))
    callback.on_job_end(job_config(job), JobReturn(status=JobStatus.FAILED, _return_value=REFUSED))
    assert {p.name: p.read_bytes() for p in job.iterdir() if p.is_file()} == before
    assert [(j.status, j.best) for j in collect(tmp_path)[0]] == [("completed", 0.9)]


@pytest.mark.parametrize("resume", ["auto", "own"])
def test_a_job_that_continues_its_run_dir_gets_a_new_status(tmp_path, resume):
    job = make_job(tmp_path, 0, ["optim.lr=0.1"], status={"status": "failed", "host": "h", "pid": 1, "started": 0.0})
    (job / "checkpoints").mkdir()
    (job / "checkpoints/last.pt").write_bytes(b"weights")
    config = job_config(job, "auto" if resume == "auto" else str(job / "checkpoints/last.pt"))
    callback = SweepSummary()
    callback.on_job_start(config)
    status = json.loads((job / STATUS_FILE).read_text())
    assert (status["status"], status["pid"]) == ("running", os.getpid())
    callback.on_job_end(config, JobReturn(status=JobStatus.COMPLETED, _return_value=0.9))
    assert json.loads((job / STATUS_FILE).read_text())["status"] == "completed"


def test_a_failed_job_gets_failed_even_if_its_status_file_was_odd(tmp_path):
    job = make_job(tmp_path, 0, ["optim.lr=0.1"])
    (job / STATUS_FILE).write_text("[]")
    SweepSummary().on_job_end(job_config(job), JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom")))
    status = json.loads((job / STATUS_FILE).read_text())
    assert (status["status"], status["error"], status["wall_s"]) == ("failed", "RuntimeError: boom", None)


# ---- groups over seeds, written at a sweep's end ---------------------------------------------------------
def test_the_callback_writes_the_summary_without_a_baseline_it_cannot_find(seeded, caplog):
    """An odyssey experiment (baseline model.variant=v in its config) swept over other variants only."""
    for job in seeded.glob("*model.variant=v,*"):
        shutil.rmtree(job)
    callback = SweepSummary(baseline="model.variant=v")
    callback.sweep_dir = seeded
    callback._summarize()
    assert "no group has model.variant=v (its values are cifg, nfg, nog); choose one of them; written without " \
           "the t-test" in caplog.text
    assert "## Over trainer.seed" in (seeded / "sweep_summary.md").read_text()
    assert "t" not in next(csv.DictReader((seeded / "sweep_summary_groups.csv").open()))


def test_a_real_sweep_over_seeds_ends_with_its_groups(tmp_path):
    """2 seeds x 2 learning rates, debug=fast, the basic launcher: the callback writes the groups, with the
    baseline its config names."""
    proc = subprocess.run(
        [LSTM_TRAIN, "-m", "debug=fast", "trainer.seed=0,1", "optim.lr=1e-3,1e-2", f"hydra.sweep.dir={tmp_path}",
         'hydra.callbacks.sweep_summary.baseline="optim.lr=0.001"'],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "sweep_summary_groups.csv").open()))
    assert sorted(r["optim.lr"] for r in rows) == ["0.001", "0.01"] and {r["n"] for r in rows} == {"2"}
    jobs = collect(tmp_path)[0]
    for r in rows:
        accs = [j.test["acc"] for j in jobs if j.overrides["optim.lr"] == r["optim.lr"]]
        assert float(r["test/acc mean"]) == pytest.approx(statistics.mean(accs))
        assert float(r["test/acc std"]) == pytest.approx(statistics.stdev(accs))
    assert [r["t"] != "" for r in rows if r["optim.lr"] == "0.01"] == [True]
    assert (tmp_path / "sweep_summary_groups.png").is_file()
    assert "## Over trainer.seed" in (tmp_path / "sweep_summary.md").read_text()


# ---- the variants study (issue 25): one experiment per task -----------------------------------------------
@pytest.mark.parametrize(("task", "model"), [("first_last", "classifier"), ("text_char", "char"),
                                             ("brown_pos", "tagger")], ids=["first_last", "text_char", "brown_pos"])
def test_the_odyssey_experiments_sweep_every_variant_over_three_seeds(compose_cfg, task, model):
    """Every variant the model can run x 3 seeds, one thread per job, compared with v at the sweep's end."""
    cfg = compose_cfg(f"experiment=odyssey_{task}", return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    expected = [v for v in VARIANTS if not (model == "char" and v == "fgr")]
    assert params["model.variant"].split(",") == expected and params["trainer.seed"] == "0,1,2"
    assert (cfg.task.name, cfg.model.name, cfg.trainer.num_threads, cfg.trainer.devices) == (task, model, 1, 1)
    assert cfg.hydra.callbacks.sweep_summary.baseline == "model.variant=v"
    for variant in expected:
        validate(compose_cfg(f"experiment=odyssey_{task}", f"model.variant={variant}"))


def test_the_char_model_refuses_fgr(compose_cfg):
    # why text_char's odyssey has no fgr
    cfg = compose_cfg("experiment=odyssey_text_char", "model.variant=fgr", "debug=fast")
    with pytest.raises(ConfigError, match=r"^model\.variant: fgr.s gates read the previous step.s gates"):
        build_model(cfg.model, build_task(cfg.task))


def test_a_tiny_study_ends_with_its_welch_table(tmp_path):
    """experiment=odyssey_first_last cut to debug=fast, two variants x two seeds: the summary compares with v."""
    proc = subprocess.run(
        [LSTM_TRAIN, "-m", "experiment=odyssey_first_last", "debug=fast", "model.variant=v,nfg", "trainer.seed=0,1",
         f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["model.variant"]: r for r in csv.DictReader((tmp_path / "sweep_summary_groups.csv").open())}
    assert sorted(rows) == ["nfg", "v"] and {r["n"] for r in rows.values()} == {"2"}
    assert rows["v"]["t"] == "" and rows["nfg"]["p"] != ""
    # and what each variant's gates do: NFG's forget gate is recorded as its constant 1
    gates = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_gates.py"), str(tmp_path), "--size", "50"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert gates.returncode == 0, gates.stderr[-2000:]
    table = [line.split("|")[1:-1] for line in gates.stdout.splitlines() if line.startswith("| `")]
    columns = [c.strip() for c in gates.stdout.splitlines()[0].split("|")[1:-1]]
    by_variant = {row[0].strip(" `"): dict(zip(columns, (c.strip() for c in row), strict=True)) for row in table}
    assert sorted(by_variant) == ["nfg", "v"] and by_variant["nfg"]["n"] == "2"
    assert by_variant["nfg"]["f"] == "1" and float(by_variant["v"]["f"]) < 1
    assert 0 <= float(by_variant["v"]["memory"]) <= 1 and (tmp_path / "gate_memory.png").stat().st_size > 0


# ---- Optuna's direction, from trainer.monitor -----------------------------------------------------------
@pytest.mark.parametrize(("monitor", "mode", "task", "direction"), [
    ("val/acc", "auto", "first_last", "maximize"),
    ("val/loss", "auto", "first_last", "minimize"),
    ("val/bpc", "auto", "text_char", "minimize"),
    ("val/f1", "auto", "text_cls", "maximize"),
    ("val/per", "auto", "g2p", "minimize"),
    ("val/exact", "auto", "reverse", "maximize"),
    ("val/acc", "min", "first_last", "minimize"),  # monitor_mode wins over the metric's own direction
    ("val/loss", "max", "first_last", "maximize"),
])
def test_monitor_direction(monitor, mode, task, direction):
    assert monitor_direction(monitor, mode, task) == direction


def test_monitor_direction_of_an_unknown_metric():
    with pytest.raises(ConfigError, match=r"^trainer.monitor: task first_last has no metric val/bpc; it has val/loss"):
        monitor_direction("val/bpc", "auto", "first_last")


# ---- the configs ------------------------------------------------------------------------------------------
def test_hparams_search_configs_compose(compose_cfg):
    cfg = compose_cfg("hparams_search=first_last", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lstm_train_sweeper.optuna_study.OptunaStudySweeper"
    assert sweeper.direction == "maximize" and cfg.trainer.max_steps == 600
    assert (sweeper.sampler._target_, sweeper.pruner, sweeper.trial) == ("optuna.samplers.TPESampler", None, None)
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert set(sweeper.params) == {"optim.lr", "model.hidden_size", "model.num_layers", "trainer.batch_size"}
    assert compose_cfg("hparams_search=first_last", "trainer.monitor=val/loss",
                       return_hydra_config=True).hydra.sweeper.direction == "minimize"
    cfg = compose_cfg("hparams_search=text_char", return_hydra_config=True)
    assert (cfg.model.name, cfg.task.name, cfg.hydra.sweeper.direction) == ("char", "text_char", "minimize")
    # debug=fast comes after the search: a whole search in seconds
    assert compose_cfg("hparams_search=first_last", "debug=fast").trainer.max_steps is None
    # a monitor the task lacks: lstm-train's one line, raised while Hydra builds the sweeper
    cfg = compose_cfg("hparams_search=first_last", "trainer.monitor=val/bpc", return_hydra_config=True)
    with pytest.raises(Exception) as error:
        _ = cfg.hydra.sweeper.direction
    assert describe_config_error(error.value) == (
        "trainer.monitor: task first_last has no metric val/bpc; it has val/loss, val/acc")


@pytest.mark.parametrize(("pruner", "target"), [("median", "MedianPruner"), ("successive_halving",
                         "SuccessiveHalvingPruner"), ("hyperband", "HyperbandPruner")])
def test_pruner_configs_make_optuna_pruners(compose_cfg, pruner, target):
    from hydra.utils import instantiate

    cfg = compose_cfg("hparams_search=first_last", f"hydra/sweeper/pruner={pruner}", return_hydra_config=True)
    assert cfg.hydra.sweeper.pruner._target_ == f"optuna.pruners.{target}"
    assert type(instantiate(cfg.hydra.sweeper.pruner)).__name__ == target
    cfg = compose_cfg("hparams_search=first_last", "hydra/sweeper/pruner=median",
                      "hydra.sweeper.pruner.n_startup_trials=1", return_hydra_config=True)
    assert cfg.hydra.sweeper.pruner.n_startup_trials == 1


def test_a_missing_plugin_names_the_sweep_extra(monkeypatch):
    error = MissingConfigException("", missing_cfg_file="hydra/launcher/joblib", options=["basic", "slurm"])
    assert describe_config_error(error) == "hydra/launcher=joblib: no such option; choose one of basic, slurm"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as without the sweep extra
    assert describe_config_error(error) == (
        "hydra/launcher=joblib: no such option; choose one of basic, slurm; Hydra's launcher and sweeper plugins "
        "come with the sweep extra: pip install -e '.[sweep]'")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm", "slurm"])
def test_launcher_configs_compose(compose_cfg, launcher):
    cfg = compose_cfg(f"hydra/launcher={launcher}", return_hydra_config=True).hydra.launcher
    assert cfg._target_.startswith("hydra_plugins.hydra_")
    if launcher == "slurm":  # ours: submitit_slurm with the keys a user sets most, overridable
        assert cfg._target_.endswith(".SlurmLauncher")
        assert (cfg.partition, cfg.timeout_min, cfg.cpus_per_task, cfg.gpus_per_node, cfg.mem_gb) == (
            None, 120, 1, None, 4)
        cfg = compose_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
                          "hydra.launcher.timeout_min=30", return_hydra_config=True).hydra.launcher
        assert (cfg.partition, cfg.gpus_per_node, cfg.timeout_min) == ("gpu", 1, 30)


def test_a_job_dir_is_named_after_what_the_job_trains(compose_cfg):
    """How a job runs (its threads, a progress bar) stays out of its dir's name, its run name in TensorBoard."""
    cfg = compose_cfg("debug=fast", "optim.lr=0.001", "trainer.num_threads=1", "trainer.progress_bar=false",
                      "model.hidden_size=8", return_hydra_config=True)
    assert cfg.hydra.job.override_dirname == "model.hidden_size=8,optim.lr=0.001"


def test_threads_per_job(compose_cfg):
    """None (torch's default) outside a sweep and in a serial one; 1 beside other jobs; SLURM: its CPUs."""
    assert threads_per_job() is None  # no Hydra app: compose() in tests and scripts
    cases = [(RunMode.RUN, "joblib", None), (RunMode.MULTIRUN, "basic", None), (RunMode.MULTIRUN, "joblib", 1),
             (RunMode.MULTIRUN, "submitit_local", 1), (RunMode.MULTIRUN, "slurm", 1)]
    try:
        for mode, launcher, expected in cases:
            hydra_cfg = compose_cfg(f"hydra/launcher={launcher}", return_hydra_config=True)
            hydra_cfg.hydra.mode = mode
            HydraConfig.instance().set_config(hydra_cfg)
            assert threads_per_job() == expected, (mode, launcher)
        hydra_cfg = compose_cfg("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=4", return_hydra_config=True)
        hydra_cfg.hydra.mode = RunMode.MULTIRUN
        HydraConfig.instance().set_config(hydra_cfg)
        assert threads_per_job() == 4
    finally:
        HydraConfig.instance().cfg = None


# ---- a multirun with a failed job, from the command line --------------------------------------------------
def test_a_failed_job_does_not_stop_the_sweep(tmp_path):
    """Job 0 fails its config check; job 1 still runs; the sweep exits 2 with one line and a summary."""
    proc = subprocess.run(
        [LSTM_TRAIN, "-m", "debug=fast", "model.hidden_size=-3,8", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["lstm-train: error: model.hidden_size: must be > 0, got -3"]  # Hydra's: none
    rows = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert [(r["job"], r["status"], r["model.hidden_size"]) for r in rows] == [("1", "completed", "8"),
                                                                              ("0", "failed", "-3")]
    assert rows[1]["error"] == "model.hidden_size: must be > 0, got -3"
    status = json.loads(next(tmp_path.glob("1_*/job_status.json")).read_text())
    assert status["status"] == "completed" and status["threads"] >= 1 and status["wall_s"] > 0

    # Run again into the same sweep dir: job 1 finished, so it is skipped and nothing of it changes; job 0 fails again.
    job = next(tmp_path.glob("1_*"))
    def files() -> dict[Path, bytes]:  # all of it: .hydra/*.yaml and train.log too, which Hydra's job start rewrites
        return {p: p.read_bytes() for p in job.rglob("*") if p.is_file()}

    kept = files()
    assert {job / STATUS_FILE, job / "metrics.json", job / ".hydra/config.yaml", job / "train.log"} <= kept.keys()
    again = subprocess.run(proc.args, capture_output=True, text=True, timeout=300, env={**os.environ,
                                                                                        "OMP_NUM_THREADS": "1"})
    assert again.returncode == 2, again.stderr[-2000:]
    assert "#1 : debug=fast model.hidden_size=8: finished before" in again.stdout
    assert files() == kept
    assert "2 jobs: 1 completed, 1 failed." in (tmp_path / "sweep_summary.md").read_text()
