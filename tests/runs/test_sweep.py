"""Sweeps, the quick part: the sweep summary (from a sweep dir written here), Optuna's direction, the launcher
and sweeper configs, threads per job, and a multirun with a failed job from the command line.
tests/runs/test_sweep_launchers.py runs the real launchers (slow); tests/sweepers/ the sweepers."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import MissingConfigException
from hydra.types import RunMode

from lstm_train.config import ConfigError, describe_config_error, monitor_direction, threads_per_job, validate
from lstm_train.models import build_model
from lstm_train.nn.variants import VARIANTS
from lstm_train.runs.jobs import STATUS_FILE, collect
from lstm_train.runs.replicates import incomplete_beta, welch, wide_range
from lstm_train.runs.sweep import SweepSummary, main, write_summary
from lstm_train.tasks import build_task
from tests import ROOT
from tests.helpers import LSTM_TRAIN, dead_pid, job_config, make_job

# ---- a sweep dir as lstm-train -m leaves it -------------------------------------------------------------




@pytest.fixture
def sweep(tmp_path) -> Path:
    """Six jobs: three completed (one of them without a status file, as before job status files existed), one
    failed, one killed hard (its pid gone), one still running (its pid alive: this test's parent)."""
    host = socket.gethostname()
    done = {"status": "completed", "host": host, "pid": 1, "started": 0.0, "wall_s": 4.5}
    make_job(tmp_path, 0, ["optim.lr=0.001", "debug=fast"], best=0.80, status=done, ended={"stopped_early": True})
    make_job(tmp_path, 1, ["optim.lr=0.01", "debug=fast"], best=0.95, status=done)
    make_job(tmp_path, 2, ["optim.lr=0.1", "debug=fast"], status={
        "status": "failed", "host": host, "pid": 1, "started": 0.0, "wall_s": 1.0,
        "error": "FloatingPointError: training diverged: train/loss is nan at step 20; try a lower optim.lr"})
    make_job(tmp_path, 3, ["optim.lr=0.003", "debug=fast"], best=0.90, ended={"max_time_reached": True})
    make_job(tmp_path, 4, ["optim.lr=1.0", "debug=fast"],
             status={"status": "running", "host": host, "pid": dead_pid(), "started": 0.0})
    make_job(tmp_path, 5, ["optim.lr=0.3", "debug=fast"],
             status={"status": "running", "host": host, "pid": os.getppid(), "started": 0.0})
    (tmp_path / ".submitit").mkdir()  # not a job dir
    return tmp_path


def test_summary_ranks_jobs_and_keeps_failed_and_died_ones(sweep):
    backend = matplotlib.get_backend()
    paths = write_summary(sweep)
    assert matplotlib.get_backend() == backend  # library code must not switch the process's backend
    assert [p.name for p in paths] == ["sweep_summary.csv", "sweep_summary.md", "sweep_summary.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = list(csv.DictReader(paths[0].open()))
    # best val/acc first (higher is better), then the jobs without a value in job order
    assert [(r["job"], r["status"]) for r in rows] == [
        ("1", "completed"), ("3", "completed"), ("0", "completed"), ("2", "failed"), ("4", "died"), ("5", "running"),
    ]
    by_job = {r["job"]: r for r in rows}
    assert by_job["1"]["optim.lr"] == "0.01" and by_job["1"]["debug"] == "fast"
    assert by_job["1"]["monitor"] == "val/acc" and float(by_job["1"]["best"]) == 0.95
    assert by_job["1"]["best_step"] == "20" and float(by_job["1"]["test/acc"]) == pytest.approx(0.94)
    assert float(by_job["1"]["wall_s"]) == 4.5  # the status file's job wall time
    assert float(by_job["3"]["wall_s"]) == 3.0  # no status file: metrics.json's
    assert by_job["2"]["error"].startswith("FloatingPointError: training diverged")
    assert [(by_job[n]["steps"], by_job[n]["ended"]) for n in "0132"] == [
        ("15", "early_stopping"), ("25", ""), ("45", "max_time"), ("", "")]
    assert float(by_job["5"]["wall_s"]) > 0  # running: time since its start

    md = paths[1].read_text()
    assert "6 jobs: 3 completed, 1 failed, 1 died, 1 running." in md
    assert "Ranked by the best val/acc of each job (higher is better)." in md
    assert "Every job: `debug=fast`." in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0] == ("| job | status | optim.lr | best val/acc | best step | test/loss | test/acc | steps "
                        "| wall s | error |")
    assert table[1].startswith("| 1 | completed | 0.01 | 0.9500 | 20 |")
    assert table[2].startswith("| 3 | completed | 0.003 | 0.9000 | 40 | 0.1000 | 0.8900 | 45 (max time) |")
    assert table[3].startswith("| 0 | completed | 0.001 | 0.8000 | 10 | 0.2000 | 0.7900 | 15 (early stopping) |")
    assert table[4].startswith("| 2 | failed | 0.1 |") and "training diverged" in table[4]


def test_summary_ranks_lower_first_when_lower_is_better(tmp_path):
    for num, bpc in enumerate([1.9, 1.5, 1.7]):
        make_job(tmp_path, num, [f"model.hidden_size={64 << num}"], best=bpc, task="text_char", task_monitor="bpc")
    jobs, skipped = collect(tmp_path)
    assert [j.maximize for j in jobs] == [False] * 3 and skipped == {} and {j.status for j in jobs} == {"completed"}
    md = write_summary(tmp_path)[1].read_text()
    assert "(lower is better)" in md
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:] \
        == ["| 1", "| 2", "| 0"]


def test_a_job_on_another_host_without_an_end_is_unknown(tmp_path):
    make_job(tmp_path, 0, ["optim.lr=0.1"], status={"status": "running", "host": "node042", "pid": 1, "started": 0.0})
    make_job(tmp_path, 1, ["optim.lr=0.2"], status={"status": "running", "host": socket.gethostname(), "started": 0.0})
    assert [j.status for j in collect(tmp_path)[0]] == ["unknown", "unknown"]  # the second: no pid to look for


def odd_jobs(sweep: Path) -> dict[str, str]:
    """Job dirs whose files have another shape than lstm-train's: dir name -> why the summary skips it."""
    host = socket.gethostname()
    (make_job(sweep, 6, ["optim.lr=6"]) / ".hydra/hydra.yaml").write_text("")
    (make_job(sweep, 7, ["optim.lr=7"], best=0.5) / STATUS_FILE).write_text("[1, 2]")
    make_job(sweep, 8, ["optim.lr=8"], status={"host": host, "pid": 1})
    (make_job(sweep, 9, ["optim.lr=9"]) / "metrics.json").write_text('[{"best": 1}]')
    (make_job(sweep, 10, ["optim.lr=10"]) / ".hydra/overrides.yaml").write_text("a: 1\n")
    (make_job(sweep, 11, ["optim.lr=11"], best=0.5) / "metrics.json").write_text('{"best": [1]}')
    return {
        "6_optim.lr=6": ".hydra/hydra.yaml holds no job number (hydra.job.num)",
        "7_optim.lr=7": f"{STATUS_FILE} has no status",
        "8_optim.lr=8": f"{STATUS_FILE} has no status",
        "9_optim.lr=9": "metrics.json is not a JSON object",
        "10_optim.lr=10": ".hydra/overrides.yaml is not a list of overrides",
        "11_optim.lr=11": "unreadable (TypeError: list indices must be integers or slices, not str)",
    }


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


def test_the_callback_summarises_despite_odd_job_dirs(sweep):
    odd_jobs(sweep)
    callback = SweepSummary()
    callback.sweep_dir = sweep
    callback._summarize()  # what on_multirun_end and the exit hook run
    assert "Skipped 6 job dirs" in (sweep / "sweep_summary.md").read_text()


def test_a_sweep_dir_of_odd_job_dirs_only_is_one_line(tmp_path, capsys):
    (make_job(tmp_path, 0, ["optim.lr=1"]) / ".hydra/hydra.yaml").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lstm-sweep-summary: error: {tmp_path}: none of its 1 job dirs could be read (0_optim.lr=1: "
        ".hydra/hydra.yaml holds no job number (hydra.job.num))")


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


# ---- groups over seeds ----------------------------------------------------------------------------------
# best val/acc and test acc of three variants x three seeds; nog's seed 2 failed, cifg's seed 2 is still running
SEEDED = {("v", 0): (0.90, 0.89), ("v", 1): (0.92, 0.90), ("v", 2): (0.91, 0.93),
          ("nfg", 0): (0.75, 0.74), ("nfg", 1): (0.80, 0.77), ("nfg", 2): (0.70, 0.72),
          ("nog", 0): (0.95, 0.94), ("nog", 1): (0.93, 0.95),
          ("cifg", 0): (0.88, 0.86), ("cifg", 1): (0.92, 0.91)}


@pytest.fixture
def seeded(tmp_path) -> Path:
    host = socket.gethostname()
    num = 0
    for variant in ("v", "nfg", "nog", "cifg"):
        for seed in range(3):
            overrides = [f"model.variant={variant}", f"trainer.seed={seed}", "debug=fast"]
            if (variant, seed) in SEEDED:
                best, acc = SEEDED[variant, seed]
                make_job(tmp_path, num, overrides, best=best, test={"acc": acc, "loss": 1 - acc},
                         status={"status": "completed", "host": host, "pid": 1, "started": 0.0, "wall_s": 2.0})
            elif variant == "nog":
                make_job(tmp_path, num, overrides, status={"status": "failed", "host": host, "pid": 1,
                                                           "started": 0.0, "error": "RuntimeError: boom"})
            else:
                make_job(tmp_path, num, overrides, status={"status": "running", "host": host, "pid": os.getppid(),
                                                           "started": 0.0})
            num += 1
    return tmp_path


def stats_of(variant: str, which: int) -> tuple[float, float]:
    values = [v[which] for (name, _), v in SEEDED.items() if name == variant]
    return statistics.mean(values), statistics.stdev(values)


def test_a_sweep_over_seeds_is_also_summarised_per_group(seeded):
    paths = write_summary(seeded, baseline="model.variant=v")
    assert [p.name for p in paths] == ["sweep_summary.csv", "sweep_summary.md", "sweep_summary.png",
                                       "sweep_summary_groups.csv", "sweep_summary_groups.png"]
    assert paths[4].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(paths[3].open()))
    # ranked by the mean best val/acc, highest first: nog 0.94, v 0.91, cifg 0.90, nfg 0.75
    assert [(r["rank"], r["model.variant"], r["n"], r["jobs"], r["failed"], r["running"]) for r in rows] == [
        ("1", "nog", "2", "3", "1", "0"), ("2", "v", "3", "3", "0", "0"), ("3", "cifg", "2", "3", "0", "1"),
        ("4", "nfg", "3", "3", "0", "0")]
    assert "trainer.seed" not in rows[0] and "debug" not in rows[0]  # the replicate key, and a key all jobs share
    for r in rows:
        variant = r["model.variant"]
        assert r["monitor"] == "val/acc"
        assert (float(r["best mean"]), float(r["best std"])) == pytest.approx(stats_of(variant, 0))
        assert (float(r["test/acc mean"]), float(r["test/acc std"])) == pytest.approx(stats_of(variant, 1))
        assert float(r["test/loss mean"]) == pytest.approx(1 - stats_of(variant, 1)[0])
    by_variant = {r["model.variant"]: r for r in rows}
    assert (by_variant["v"]["t"], by_variant["v"]["p"]) == ("", "")  # the baseline itself
    # Welch's test on test/acc (the monitor's own metric), nfg against v, computed here by its formulas
    (m1, s1), (m2, s2) = stats_of("nfg", 1), stats_of("v", 1)
    se2 = s1**2 / 3 + s2**2 / 3
    t, df = (m1 - m2) / se2**0.5, se2**2 / ((s1**2 / 3) ** 2 / 2 + (s2**2 / 3) ** 2 / 2)
    assert float(by_variant["nfg"]["t"]) == pytest.approx(t) and float(by_variant["nfg"]["df"]) == pytest.approx(df)
    scipy_stats = pytest.importorskip("scipy.stats")
    for variant in ("nfg", "nog", "cifg"):
        accs = [v[1] for (name, _), v in SEEDED.items() if name == variant]
        expected = scipy_stats.ttest_ind(accs, [v[1] for (name, _), v in SEEDED.items() if name == "v"],
                                         equal_var=False)
        assert float(by_variant[variant]["t"]) == pytest.approx(expected.statistic)
        assert float(by_variant[variant]["p"]) == pytest.approx(expected.pvalue)

    md = paths[1].read_text()
    assert "## Over trainer.seed" in md
    assert "Welch's t-test of each group's test/acc against the group with model.variant=v" in md
    table = md[md.index("## Over trainer.seed"):].splitlines()
    table = [line for line in table if line.startswith("| ")]
    assert table[0] == ("| rank | model.variant | n | failed | running | best val/acc | test/acc | test/loss | t | p |")
    m, s = stats_of("nog", 0)
    assert table[1].startswith(f"| 1 | nog | 2 of 3 | 1 | 0 | {m:.4f} ± {s:.4f} |")
    assert table[2].startswith("| 2 | v | 3 of 3 | 0 | 0 |") and table[2].endswith("|  |  |")
    assert table[4].endswith(f"| {t:.2f} | {float(by_variant['nfg']['p']):.3g} |")


def test_groups_rank_lower_first_for_a_loss_and_keep_other_swept_keys(tmp_path):
    """bpc: lower is better. Two swept keys besides the seed: one group per pair of values."""
    values = {("0.001", "64"): [1.9, 2.1], ("0.001", "128"): [1.5, 1.6], ("0.01", "64"): [1.7, 1.8],
              ("0.01", "128"): [2.5]}  # the last group has one seed: no std
    num = 0
    for (lr, hidden), bpcs in values.items():
        for seed, bpc in enumerate(bpcs):
            make_job(tmp_path, num, [f"optim.lr={lr}", f"model.hidden_size={hidden}", f"trainer.seed={seed}"],
                     best=bpc, task="text_char", task_monitor="bpc", test={"bpc": bpc + 0.1})
            num += 1
    rows = list(csv.DictReader(write_summary(tmp_path)[3].open()))
    assert [(r["optim.lr"], r["model.hidden_size"]) for r in rows] == [
        ("0.001", "128"), ("0.01", "64"), ("0.001", "64"), ("0.01", "128")]
    assert float(rows[0]["best mean"]) == pytest.approx(1.55) and rows[0]["monitor"] == "val/bpc"
    assert float(rows[0]["best std"]) == pytest.approx(statistics.stdev([1.5, 1.6]))
    assert rows[3]["best std"] == "" and "t" not in rows[0]  # one value: no std; no baseline: no test


def test_groups_of_different_monitors_say_which(tmp_path):
    """A sweep over tasks: val/acc in some groups, val/bpc in others; each ranked in its own direction."""
    num = 0
    for task, monitor, values in [("first_last", "acc", [0.9, 0.8]), ("text_char", "bpc", [1.5, 1.7])]:
        for seed, value in enumerate(values):
            make_job(tmp_path, num, [f"task={task}", f"trainer.seed={seed}"], best=value, task=task,
                     task_monitor=monitor, test={monitor: value})
            num += 1
    md = write_summary(tmp_path, baseline="task=first_last")[1].read_text()
    table = [line for line in md[md.index("## Over"):].splitlines() if line.startswith("| ")]
    assert "each in its monitor's direction" in md and "test value" not in md
    assert table[0] == "| rank | task | n | failed | running | best (monitor) | test/acc | test/bpc | t | p |"
    assert table[1].startswith("| 1 | first_last | 2 of 2 | 0 | 0 | 0.8500 ± 0.0707 (val/acc) |")
    # text_char against first_last would be bpc against accuracy: no test
    assert table[2].startswith("| 2 | text_char | 2 of 2 | 0 | 0 | 1.6000 ± 0.1414 (val/bpc) |")
    assert table[2].endswith("|  |  |")


def test_a_sweep_without_seeds_has_no_groups_and_drops_old_ones(seeded, tmp_path):
    write_summary(seeded)
    assert (seeded / "sweep_summary_groups.csv").is_file()
    # --replicate names another key: the seeds are then groups of their own, one job each
    main([str(seeded), "--replicate", "model.variant"])
    rows = list(csv.DictReader((seeded / "sweep_summary_groups.csv").open()))
    assert sorted(r["trainer.seed"] for r in rows) == ["0", "1", "2"]
    other = tmp_path / "lr"
    for num, lr in enumerate(["0.1", "0.01"]):
        make_job(other, num, [f"optim.lr={lr}"], best=0.5 + num / 10)
    (other / "sweep_summary_groups.csv").write_text("stale")
    assert "sweep_summary_groups.csv" not in [p.name for p in write_summary(other)]
    assert not (other / "sweep_summary_groups.csv").exists()
    assert "## Over" not in (other / "sweep_summary.md").read_text()


@pytest.mark.parametrize(("args", "error"), [
    (["--baseline", "model.variant"], "--baseline model.variant: not KEY=VALUE; give the group the others are "
                                      "compared with, e.g. --baseline model.variant=v"),
    (["--baseline", "model.variant=lstm"], "--baseline model.variant=lstm: no group has model.variant=lstm (its "
                                           "values are cifg, nfg, nog, v); choose one of them"),
    (["--baseline", "optim.lr=0.1"], "--baseline optim.lr=0.1: no group has optim.lr=0.1 (it is not a swept key); "
                                     "choose one of them"),
    (["--replicate", "optim.lr"], "--replicate optim.lr: the jobs of {d} do not differ in it; name a key the sweep "
                                  "varies"),
])
def test_a_baseline_or_replicate_that_names_nothing_is_one_line(seeded, capsys, args, error):
    with pytest.raises(SystemExit) as exit_info:
        main([str(seeded), *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"lstm-sweep-summary: error: {error.format(d=seeded)}"]
    assert not (seeded / "sweep_summary.md").exists()  # refused before writing anything


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


def test_welch_against_hand_computed_values():
    # n = 2 each, equal variances: df = 2, and Student's t with 2 df has P(|T| >= t) = 1 - t / sqrt(t^2 + 2)
    t, df, p = welch([1.0, 3.0], [0.0, 2.0])
    assert (t, df) == pytest.approx((2**-0.5, 2.0)) and p == pytest.approx(1 - 5**-0.5, rel=1e-12)
    # unequal variances: t = (2 - 4) / sqrt(1/3 + 4/3), df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    t, df, p = welch([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert t == pytest.approx(-2 / (5 / 3) ** 0.5) and df == pytest.approx(50 / 17)
    assert welch([1.0, 2.0], [3.0]) is None  # one value has no variance
    assert welch([1.0, 1.0], [2.0, 2.0])[::2] == (-float("inf"), 0.0)
    # I_x(1/2, 1/2) = 2/pi asin(sqrt x); I_x(a, 1) = x^a; the symmetry branch too
    assert incomplete_beta(0.5, 0.5, 0.3) == pytest.approx(2 / math.pi * math.asin(0.3**0.5), rel=1e-12)
    assert incomplete_beta(0.5, 0.5, 0.9) == pytest.approx(2 / math.pi * math.asin(0.9**0.5), rel=1e-12)
    assert incomplete_beta(2.5, 1.0, 0.9) == pytest.approx(0.9**2.5, rel=1e-12)
    assert incomplete_beta(1.0, 3.0, 0.2) == pytest.approx(1 - 0.8**3, rel=1e-12)


def test_welch_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.gauss(0, rng.uniform(0.01, 3)) for _ in range(rng.randint(2, 8))]
        b = [rng.gauss(1, rng.uniform(0.01, 3)) for _ in range(rng.randint(2, 8))]
        expected = scipy_stats.ttest_ind(a, b, equal_var=False)
        t, df, p = welch(a, b)
        assert (t, df, p) == pytest.approx((expected.statistic, expected.df, expected.pvalue), rel=1e-9, abs=1e-12)


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
    assert proc.stderr.splitlines() == [
        "Error executing job with overrides: ['debug=fast', 'model.hidden_size=-3']",  # Hydra's line
        "lstm-train: error: model.hidden_size: must be > 0, got -3",
    ]
    rows = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert [(r["job"], r["status"], r["model.hidden_size"]) for r in rows] == [("1", "completed", "8"),
                                                                              ("0", "failed", "-3")]
    assert rows[1]["error"] == "ConfigError: model.hidden_size: must be > 0, got -3"
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


def test_a_diverged_groups_huge_values_are_written_short(tmp_path):
    """A diverged run's perplexity (2 ** 300) fills a table cell in scientific notation, not in 91 digits."""
    for seed, ppl in enumerate((2.0 ** 300, 2.0 ** 310)):
        make_job(tmp_path, seed, [f"trainer.seed={seed}"], best=300.0 + seed, task="text_char",
                 task_monitor="bpc", test={"ppl": ppl})
    summary = write_summary(tmp_path)[1].read_text()
    assert "2.086e+93" in summary and "1.044e+93" in summary  # the second job's value, and the group's mean
    assert max(len(line) for line in summary.splitlines() if line.startswith("|")) < 100


@pytest.mark.parametrize(("values", "log"), [([1.64, 1.70, 2.55, 306.6], True), ([1.64, 1.70, 2.55], False),
                                             ([0.97, 0.99], False), ([-1.0, 100.0], False), ([], False)])
def test_a_group_far_from_the_others_puts_the_plot_on_a_log_scale(values, log):
    assert wide_range(values) is log
