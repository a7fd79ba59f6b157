"""A grid sweep started again with the same sweep dir (issue 28, item 2): the finished jobs are skipped and their
dirs left as they are, the killed ones continue from their last.pt, the rest run; a grid that would put other
overrides under an existing job number is refused. The sweeper on a stand-in launcher, then sweeps killed with
SIGTERM and started again from the command line, with the basic launcher and with joblib."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.lstm_train_sweeper import grid as grid_sweeper
from lstm_train.errors import ConfigError
from lstm_train.runs import rundir
from lstm_train.runs.jobs import STATUS_FILE, collect
from lstm_train.runs.sweep import SweepSummary
from lstm_train.train import train
from tests.helpers import ENV, LSTM_TRAIN, dead_pid, digest, job_config, make_job


# ---- the sweeper, on a stand-in launcher ------------------------------------------------------------------
class Launcher:
    """Records (first job number, overrides) of each launch; its jobs complete and return 0.5."""

    def __init__(self) -> None:
        self.launches: list[tuple[int, list]] = []

    def launch(self, job_overrides, initial_job_idx):
        self.launches.append((initial_job_idx, [list(o) for o in job_overrides]))
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=0.5) for _ in job_overrides]


class Context:
    config_loader = None  # the override parser needs none for plain comma lists


def run_grid(sweep_dir: Path, arguments: list[str], launcher: Launcher, max_batch_size: int | None = None) -> list:
    # Looked up now: Hydra's plugin scan (any earlier composition in this process) executes the sweeper's module
    # and Hydra's BasicSweeper again, and a class taken at import would then subclass a stale BasicSweeper.
    sweeper = grid_sweeper.ResumableGridSweeper(max_batch_size=max_batch_size)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    sweeper.hydra_context, sweeper.launcher = Context(), launcher
    sweeper.validate_batch_is_legal = lambda batch: None  # composes each job's config: needs a Hydra app
    return [r.return_value for batch in sweeper.sweep(arguments) for r in batch]


def grid(lrs: str = "0.1,0.2", seeds: str = "1,2") -> list[str]:
    return ["debug=fast", f"optim.lr={lrs}", f"trainer.seed={seeds}"]


def job(lr: str, seed: int) -> list[str]:
    return ["debug=fast", f"optim.lr={lr}", f"trainer.seed={seed}"]


def killed(job_dir: Path) -> Path:
    (job_dir / "checkpoints").mkdir()
    (job_dir / "checkpoints/last.pt").write_bytes(b"weights")
    return job_dir


def test_a_new_sweep_dir_runs_the_whole_grid(tmp_path):
    run_grid(tmp_path / "new", grid(), launcher := Launcher())
    assert launcher.launches == [(0, [job("0.1", 1), job("0.1", 2), job("0.2", 1), job("0.2", 2)])]


def test_finished_jobs_are_skipped_and_the_others_launched_under_their_own_numbers(tmp_path):
    make_job(tmp_path, 0, job("0.1", 1), best=0.7)
    continued = killed(make_job(tmp_path, 1, job("0.1", 2)))
    make_job(tmp_path, 2, job("0.2", 1), best=0.9)
    returns = run_grid(tmp_path, grid(), launcher := Launcher())
    # jobs 1 (to continue) and 3 (never started) keep their numbers: two launches
    assert launcher.launches == [(1, [job("0.1", 2)]), (3, [job("0.2", 2)])]
    assert returns == [0.7, 0.5, 0.9, 0.5]  # the finished jobs' stored best values, in job order

    make_job(tmp_path, 3, job("0.2", 2), best=0.8)
    run_grid(tmp_path, grid(), launcher := Launcher(), max_batch_size=3)
    assert launcher.launches == [(1, [job("0.1", 2)])]  # batches of 3: jobs 0-2, then job 3 (finished)
    (continued / "metrics.json").write_text(json.dumps({"best": {"value": 0.6, "step": 8}}))  # it finished
    assert run_grid(tmp_path, grid(), launcher := Launcher()) == [0.7, 0.6, 0.9, 0.8]
    assert launcher.launches == []  # all finished: nothing to launch


@pytest.mark.parametrize(("arguments", "held", "given"), [
    (grid(lrs="0.1,0.3"), "optim.lr=0.2", "optim.lr=0.3"),  # a value changed
    (grid(seeds="1,2,3"), "optim.lr=0.2 trainer.seed=1", "optim.lr=0.1 trainer.seed=3"),  # an inner list grown
    (["trainer.seed=1,2", "optim.lr=0.1,0.2", "debug=fast"], "optim.lr=0.2 trainer.seed=1",
     "trainer.seed=2 optim.lr=0.1"),  # the lists in another order
    ([*grid(), "trainer.max_steps=50"], "nothing more", "trainer.max_steps=50"),  # an override added
])
def test_a_grid_that_gives_a_job_number_other_overrides_is_refused(tmp_path, arguments, held, given):
    make_job(tmp_path, 0, job("0.1", 1), best=0.7)
    make_job(tmp_path, 2, job("0.2", 1))
    job_2 = "0" if held == "nothing more" else "2"
    with pytest.raises(ConfigError) as error:
        run_grid(tmp_path, arguments, launcher := Launcher())
    assert str(error.value) == (
        f"hydra.sweep.dir: {tmp_path} holds job {job_2} with {held}, where this sweep's job {job_2} has {given}: a "
        "sweep started again must give the same overrides and values, in the same order; start it so, or choose "
        "another hydra.sweep.dir")
    assert launcher.launches == [] and not (tmp_path / "multirun.yaml").exists()


def test_a_grid_grown_in_its_first_list_or_with_trainer_resume_continues(tmp_path):
    make_job(tmp_path, 0, job("0.1", 1), best=0.7)
    run_grid(tmp_path, [*grid(lrs="0.1,0.2,0.3"), "trainer.resume=auto"], launcher := Launcher())
    assert [(idx, len(jobs)) for idx, jobs in launcher.launches] == [(1, 5)]


def test_a_job_killed_after_writing_its_metrics_is_completed(tmp_path):
    """SIGTERM to a joblib sweep's process group can end a worker between the job's metrics.json and the end
    of its status file: it finished (and a sweep started again skips it)."""
    running = {"status": "running", "host": socket.gethostname(), "pid": dead_pid(), "started": 0.0}
    make_job(tmp_path, 0, job("0.1", 1), best=0.7, status=running)
    make_job(tmp_path, 1, job("0.1", 2), status=running)
    assert [(j.status, j.best) for j in collect(tmp_path)[0]] == [("completed", 0.7), ("died", None)]


class Failing(Launcher):
    """Its job 1 fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def launch(self, job_overrides, initial_job_idx):
        returns = super().launch(job_overrides, initial_job_idx)
        returns[1] = JobReturn(overrides=list(job_overrides[1]), status=JobStatus.FAILED, _return_value=self.error)
        return returns


@pytest.mark.parametrize(("error", "hydra_line"), [
    (ConfigError("optim.lr", "must be > 0, got -1"), False),  # lstm-train's line alone says it
    (FloatingPointError("training diverged"), False),
    (RuntimeError("boom"), True),  # unexpected: Hydra's line names the job, then the traceback
])
def test_a_failed_job_ends_the_sweep_with_its_error_and_hydras_line_only_if_unexpected(tmp_path, capsys, error,
                                                                                      hydra_line):
    with pytest.raises(type(error)) as raised:
        run_grid(tmp_path, grid(), Failing(error))
    assert raised.value is error
    stderr = capsys.readouterr().err
    assert ("Error executing job with overrides: ['debug=fast', 'optim.lr=0.1', 'trainer.seed=2']" in stderr) \
        == hydra_line, stderr


# ---- the job: a killed job continues, under the grid sweeper only -----------------------------------------
@pytest.mark.parametrize(("sweeper", "resume", "last", "expected"), [
    (rundir.GRID_SWEEPER, None, True, "auto"),
    (rundir.GRID_SWEEPER, None, False, None),  # nothing to continue: it starts
    (rundir.GRID_SWEEPER, "x.pt", True, "x.pt"),  # the user's own choice stands
    ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", None, True, None),  # refused, as before
])
def test_a_grid_sweeps_killed_job_continues_its_last_pt(tmp_path, sweeper, resume, last, expected):
    job_dir = killed(tmp_path) if last else tmp_path
    hydra_cfg = job_config(job_dir).hydra
    hydra_cfg.sweeper = {"_target_": sweeper}
    assert rundir.job_resume(resume, hydra_cfg, job_dir) == expected


def test_a_job_another_process_runs_keeps_its_status(tmp_path):
    """The same sweep started twice at once: the second start's job is refused by the dir's lock, and must not
    write its status over that of the job running there."""
    job_dir = killed(make_job(tmp_path, 0, job("0.1", 1), status={"status": "running", "host": "h", "pid": 1}))
    before = (job_dir / STATUS_FILE).read_bytes()
    config = job_config(job_dir)
    config.hydra.sweeper = {"_target_": rundir.GRID_SWEEPER}
    with rundir.claim(job_dir, undo_if_refused=False):
        SweepSummary().on_job_start(config)
    assert (job_dir / STATUS_FILE).read_bytes() == before
    SweepSummary().on_job_start(config)  # the dir free: the job continues there
    assert json.loads((job_dir / STATUS_FILE).read_text())["pid"] == os.getpid()


# ---- killed with SIGTERM, started again -------------------------------------------------------------------
SEEDS = (1, 2, 3)


def kill_and_start_again(sweep_dir: Path, launcher: list[str], compose_cfg, third: bool) -> None:
    """Start a 3-job sweep, SIGTERM its process group once a job is finished and another has a last.pt, start it
    again: the finished jobs' dirs are unchanged, and the jobs cut off end with the metrics of a run never killed
    (trained here in-process: the same numbers as a sweep's job). ``third``: start it a third time, which runs
    nothing and changes no job dir."""
    args = [LSTM_TRAIN, "-m", *launcher, "debug=fast", f"trainer.seed={','.join(map(str, SEEDS))}",
            f"hydra.sweep.dir={sweep_dir}"]
    stderr = (sweep_dir.parent / "first-start.stderr").open("w+")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        finished = list(sweep_dir.glob("*/metrics.json"))
        started = [p for p in sweep_dir.glob("*/checkpoints/last.pt") if not (p.parents[1] / "metrics.json").exists()]
        if finished and started:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
    assert proc.returncode != 0  # killed before its end
    if not launcher:  # the job stopped at a step in this process: it says how to go on (joblib's die at once)
        stderr.seek(0)
        assert f"; to continue the sweep, start it again with hydra.sweep.dir={sweep_dir}\n" in stderr.read()
    done = {p.parent: digest(p.parent) for p in sweep_dir.glob("*/metrics.json")}
    assert 0 < len(done) < len(SEEDS)
    cut = {j.num: j.overrides["trainer.seed"] for j in collect(sweep_dir)[0] if j.dir not in done}
    assert any((sweep_dir / f"{num}_trainer.seed={seed}/checkpoints/last.pt").is_file() for num, seed in cut.items())

    again = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Continuing sweep {sweep_dir}: {len(done)} of {len(SEEDS)} jobs finished (skipped)" in again.stdout
    assert {job_dir: digest(job_dir) for job_dir in done} == done  # byte for byte
    rows = {int(r["job"]): r for r in csv.DictReader((sweep_dir / "sweep_summary.csv").open())}
    assert sorted(rows) == [0, 1, 2] and {r["status"] for r in rows.values()} == {"completed"}
    for num, seed in enumerate(SEEDS):
        metrics = json.loads((sweep_dir / f"{num}_trainer.seed={seed}/metrics.json").read_text())
        assert rows[num]["trainer.seed"] == str(seed) and float(rows[num]["best"]) == metrics["best"]["value"]
        if num in cut:
            expected = train(compose_cfg("debug=fast", f"trainer.seed={seed}"), sweep_dir.parent / f"whole-{num}")
            assert (metrics["best"], metrics["test"], metrics["step"]) == (
                expected["best"], expected["test"], expected["step"]), num
    if not third:
        return
    everything = digest(sweep_dir)
    last = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert last.returncode == 0 and "3 of 3 jobs finished (skipped), 0 to continue" in last.stdout
    assert "Launching" not in last.stdout
    assert {k: v for k, v in digest(sweep_dir).items() if not k.startswith(("sweep_summary", "multirun"))} == {
        k: v for k, v in everything.items() if not k.startswith(("sweep_summary", "multirun"))}


def test_a_sweep_killed_and_started_again_ends_as_one_never_killed(tmp_path, compose_cfg):
    kill_and_start_again(tmp_path / "sweep", [], compose_cfg, third=False)


@pytest.mark.slow
def test_a_joblib_sweep_killed_and_started_again_ends_as_one_never_killed(tmp_path, compose_cfg):
    kill_and_start_again(tmp_path / "sweep", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], compose_cfg,
                         third=True)
