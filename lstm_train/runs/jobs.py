"""A sweep dir's jobs, read from their dirs: what :mod:`lstm_train.runs.summary` ranks and
:mod:`lstm_train.runs.replicates` groups, and what the grid sweeper continues from.

One row per job dir (a dir holding ``.hydra/overrides.yaml``): its overrides, the best value of its
trainer.monitor and the step it was reached at, its test metrics (from metrics.json), wall time and status.
A job killed hard (SIGKILL, a lost node) never records its end; its status then says what can be known:
running (its process still exists on this host), died (it does not, or it ran in the process writing the
summary, which has left it behind) or unknown (it ran on another host, e.g. a SLURM node: ask squeue).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lstm_train.config import monitor_direction
from lstm_train.errors import REPORTED

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"  # written by lstm_train.runs.sweep.SweepSummary in each job


@dataclass
class Job:
    num: int
    dir: Path
    status: str  # completed, pruned, failed, running, died, unknown
    overrides: dict[str, str]
    monitor: str | None = None  # trainer.monitor, e.g. val/acc
    maximize: bool | None = None
    best: float | None = None  # the best monitored value
    best_step: int | None = None
    test: dict[str, float] = field(default_factory=dict)
    steps: int | None = None  # optimizer steps done
    ended: str = ""  # what ended training before its step limit: early_stopping, max_time or pruned
    wall_s: float | None = None  # start to end; to now for a running job
    host: str | None = None
    error: str | None = None


def collect(sweep_dir: str | Path) -> tuple[list[Job], dict[str, str]]:
    """Every job of the sweep dir, in job order, and the job dirs it could not read (dir name -> why), each
    also logged as a warning: one odd dir must not cost the summary of the others. Raises ValueError if the
    sweep dir holds no job dir it can read."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise ValueError(f"no directory at {sweep_dir}")
    jobs, skipped = [], {}
    for job_dir in job_dirs(sweep_dir):
        try:
            jobs.append(_read_job(job_dir))
        except Exception as e:  # a file of another shape than ours (edited, foreign, another version's)
            skipped[job_dir.name] = str(e) if isinstance(e, OddJob) else f"unreadable ({one_line(e)})"
            log.warning("skipped job dir %s: %s", job_dir, skipped[job_dir.name])
    if not jobs:
        if skipped:
            name, why = next(iter(skipped.items()))
            raise ValueError(f"{sweep_dir}: none of its {len(skipped)} job dirs could be read ({name}: {why})")
        raise ValueError(f"{sweep_dir} holds no job dirs (<job>/.hydra/overrides.yaml): is it a multirun dir?")
    return sorted(jobs, key=lambda j: j.num), skipped


def earlier_jobs(sweep_dir: Path) -> dict[int, Job]:
    """The jobs a sweep dir holds already, by number: none for a new dir (a dir that cannot be read is left
    out, with a warning, as in the summary)."""
    try:
        jobs, _ = collect(sweep_dir)
    except ValueError:  # no dir yet, or no job dir in it
        return {}
    return {job.num: job for job in jobs}


class OddJob(ValueError):
    """A job dir whose files do not say what a job's files say: the one line why."""


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs, by their names' numbers (2_... before 10_...)."""
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(dirs, key=lambda d: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", d.name)])


def _read_job(job_dir: Path) -> Job:
    hydra_dir = job_dir / ".hydra"
    overrides = OmegaConf.to_container(OmegaConf.load(hydra_dir / "overrides.yaml"))
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise OddJob(".hydra/overrides.yaml is not a list of overrides")
    num = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.job.num")
    if not isinstance(num, int):
        raise OddJob(".hydra/hydra.yaml holds no job number (hydra.job.num)")
    job = Job(num=num, dir=job_dir, status="unknown", overrides=dict(o.partition("=")[::2] for o in overrides))
    try:
        cfg = OmegaConf.load(hydra_dir / "config.yaml")
        job.monitor = str(OmegaConf.select(cfg, "trainer.monitor"))
        job.maximize = monitor_direction(job.monitor, cfg.trainer.monitor_mode, cfg.task.name) == "maximize"
    except Exception:  # a broken or foreign config.yaml: the row still shows the job's status
        pass
    metrics = read_json(job_dir / "metrics.json")
    if metrics is not None:
        _read_metrics(job, metrics)
    status = read_json(job_dir / STATUS_FILE)
    if status is not None:
        _read_status(job, status)
    return job


def _read_metrics(job: Job, metrics: Any) -> None:
    if not isinstance(metrics, dict):
        raise OddJob("metrics.json is not a JSON object")
    job.status = "completed"
    best, test, wall = metrics.get("best"), metrics.get("test") or {}, (metrics.get("time") or {}).get("total_s")
    if best:
        job.best, job.best_step = float(best["value"]), best["step"]
    if not isinstance(test, dict):
        raise OddJob("metrics.json: test is not a JSON object")
    job.test = {k: float(v) for k, v in test.items()}
    job.steps = metrics.get("step")
    job.ended = ("max_time" if metrics.get("max_time_reached") else
                 "early_stopping" if metrics.get("stopped_early") else "")
    job.wall_s = None if wall is None else float(wall)


def _read_status(job: Job, status: Any) -> None:
    if not isinstance(status, dict) or not isinstance(status.get("status"), str):
        raise OddJob(f"{STATUS_FILE} has no status")
    job.host, job.error = status.get("host"), status.get("error")
    finished = job.status == "completed"  # its metrics.json, the last thing a job writes before its end
    job.status = status["status"]
    if job.status == "running":
        job.status = _running_or_not(status)
        if finished and job.status == "died":  # killed between its metrics.json and the end of its status
            job.status = "completed"
        if job.status == "running" and isinstance(status.get("started"), int | float):
            job.wall_s = time.time() - status["started"]
    elif status.get("wall_s") is not None:
        job.wall_s = float(status["wall_s"])
    if job.status == "pruned":  # no metrics.json: the values until the pruner stopped it
        best = status.get("best")
        if best:
            job.best, job.best_step = float(best["value"]), best["step"]
        job.steps, job.ended = status.get("steps"), "pruned"


def _running_or_not(status: dict[str, Any]) -> str:
    """The status of a job whose end was never recorded: running, died or unknown."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return "unknown"  # another host's, or no process to look for (pid 0 or less: a group to kill)
    if pid == os.getpid():  # the sweeping process ran it in-process and has moved past it
        return "died"
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return "died"
    except PermissionError:  # exists, under another user
        pass
    return "running"


def one_line(error: BaseException) -> str:
    """An error as one line: its message's first line as lstm-train shows it, after its type's name unless it is
    one of :data:`lstm_train.errors.REPORTED`."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return lines[0] if isinstance(error, REPORTED) else f"{type(error).__name__}: {lines[0]}"


def read_json(path: Path) -> dict[str, Any] | None:
    """A job's JSON file, or None if it cannot be read yet."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or caught half-written by a reader on another host
        return None
