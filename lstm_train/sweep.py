"""A sweep's bookkeeping: each job's status while it runs, and the summary of the whole sweep.

:class:`SweepSummary` is a Hydra callback (conf/config.yaml, ``hydra.callbacks``). In a job's own process it
writes ``<job dir>/job_status.json`` when the job starts (running: host, pid, start time) and when it ends
(completed, or failed with the error's first line; wall time; torch threads). In the sweeping process it
writes ``sweep_summary.csv``, ``.md`` and ``.png`` into the sweep dir when the multirun ends, or when that
process exits on an error (a failed job, Ctrl-C). ``lstm-sweep-summary DIR`` writes the same files from the
directory alone: for a sweep that is still running, or died.

One row per job dir (a dir holding ``.hydra/overrides.yaml``): its overrides, the best value of its
trainer.monitor and the step it was reached at, its test metrics (from metrics.json), wall time and status.
A job killed hard (SIGKILL, a lost node) never records its end; its status then says what can be known:
running (its process still exists on this host), died (it does not, or it ran in the process writing the
summary, which has left it behind) or unknown (it ran on another host, e.g. a SLURM node: ask squeue).
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lstm_train.config import monitor_direction
from lstm_train.errors import ConfigError

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"
SUMMARY = "sweep_summary"  # .csv, .md, .png


# ---- the callback ---------------------------------------------------------------------------------------
class SweepSummary(Callback):
    """Job status files in every multirun job; the summary at the end of the multirun."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or _refused(config):
            return
        _write_json(Path(config.hydra.runtime.output_dir) / STATUS_FILE, {
            "status": "running", "job": config.hydra.job.num, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.time(),
        })

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        error = job_return._return_value if job_return.status != JobStatus.COMPLETED else None  # .return_value raises
        if isinstance(error, ConfigError) and error.key == "hydra.run.dir":
            return  # refused: the job dir is a run of its own (a sweep run again into its dir), whose status stands
        import torch

        path = Path(config.hydra.runtime.output_dir) / STATUS_FILE
        status = _read_json(path)
        if not isinstance(status, dict):
            status = {"job": config.hydra.job.num}
        now, started = time.time(), status.get("started")
        status.update(status="completed", ended=now, wall_s=now - started if isinstance(started, int | float) else None,
                      threads=torch.get_num_threads())
        if error is not None:
            status.update(status="failed", error=_one_line(error))
        _write_json(path, status)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        # on_multirun_end does not run when the sweep stops on an error (a failed job, Ctrl-C): summarize then
        atexit.register(self._summarize)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._summarize)
        self._summarize()

    def _summarize(self) -> None:
        if self.sweep_dir is None or not any(_job_dirs(self.sweep_dir)):
            return
        try:
            paths = write_summary(self.sweep_dir)
        except Exception as e:  # a summary must never turn a finished sweep into a failed one
            log.warning("sweep summary failed: %s", _one_line(e))
            return
        log.info("sweep summary: %s", paths[1])


def _refused(config: DictConfig) -> bool:
    """Whether lstm-train will refuse the job because its dir holds a run's checkpoints that the job would not
    continue (as when a finished sweep is run again into its sweep dir): the rule of
    :func:`lstm_train.train.resume_path`, which refuses it. Nothing of that run may change."""
    own = Path(config.hydra.runtime.output_dir) / "checkpoints" / "last.pt"
    if not (own.is_file() or own.with_name("best.pt").is_file()):
        return False
    resume = OmegaConf.select(config, "trainer.resume")
    if resume == "auto":
        return not own.is_file()
    return resume is None or Path(resume).expanduser().resolve() != own.resolve()


# ---- reading a sweep dir --------------------------------------------------------------------------------
@dataclass
class Job:
    num: int
    dir: Path
    status: str  # completed, failed, running, died, unknown
    overrides: dict[str, str]
    monitor: str | None = None  # trainer.monitor, e.g. val/acc
    maximize: bool | None = None
    best: float | None = None  # the best monitored value
    best_step: int | None = None
    test: dict[str, float] = field(default_factory=dict)
    steps: int | None = None  # optimizer steps done
    ended: str = ""  # what ended training before its step limit: early_stopping or max_time
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
    for job_dir in _job_dirs(sweep_dir):
        try:
            jobs.append(_read_job(job_dir))
        except Exception as e:  # a file of another shape than ours (edited, foreign, another version's)
            skipped[job_dir.name] = str(e) if isinstance(e, OddJob) else f"unreadable ({_one_line(e)})"
            log.warning("skipped job dir %s: %s", job_dir, skipped[job_dir.name])
    if not jobs:
        if skipped:
            name, why = next(iter(skipped.items()))
            raise ValueError(f"{sweep_dir}: none of its {len(skipped)} job dirs could be read ({name}: {why})")
        raise ValueError(f"{sweep_dir} holds no job dirs (<job>/.hydra/overrides.yaml): is it a multirun dir?")
    return sorted(jobs, key=lambda j: j.num), skipped


class OddJob(ValueError):
    """A job dir whose files do not say what a job's files say: the one line why."""


def _job_dirs(sweep_dir: Path) -> list[Path]:
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
    metrics = _read_json(job_dir / "metrics.json")
    if metrics is not None:
        _read_metrics(job, metrics)
    status = _read_json(job_dir / STATUS_FILE)
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
    job.status = status["status"]
    if job.status == "running":
        job.status = _running_or_not(status)
        if job.status == "running" and isinstance(status.get("started"), int | float):
            job.wall_s = time.time() - status["started"]
    elif status.get("wall_s") is not None:
        job.wall_s = float(status["wall_s"])


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


# ---- the summary ----------------------------------------------------------------------------------------
def write_summary(sweep_dir: str | Path) -> list[Path]:
    """sweep_summary.csv, .md and (when some job has a value and a key was swept) .png; returns their paths."""
    sweep_dir = Path(sweep_dir).expanduser()
    jobs, skipped = collect(sweep_dir)
    jobs = ranked(jobs)
    out = sweep_dir / SUMMARY
    paths = [out.with_suffix(".csv"), out.with_suffix(".md")]
    write_csv(jobs, paths[0])
    paths[1].write_text(markdown(jobs, sweep_dir.name, skipped))
    png = out.with_suffix(".png")
    if plot(jobs, png, sweep_dir.name):
        paths.append(png)
    else:
        png.unlink(missing_ok=True)  # an earlier summary's plot would no longer match the table
    return paths


def ranked(jobs: list[Job]) -> list[Job]:
    """Jobs with a monitored value first, best first (per monitor), then the others in job order."""
    def key(j: Job) -> tuple:
        if j.best is None or not math.isfinite(j.best):
            return (1, "", 0.0, j.num)
        return (0, j.monitor or "", -j.best if j.maximize else j.best, j.num)

    return sorted(jobs, key=key)


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (or that some jobs lack), in first-seen order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def _test_keys(jobs: list[Job]) -> list[str]:
    return list(dict.fromkeys(k for j in jobs for k in j.test))


def write_csv(jobs: list[Job], path: Path) -> None:
    """Every override key (swept or not) gets a column: the CSV holds each job's whole command line."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    tests = _test_keys(jobs)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "status", *keys, "monitor", "best", "best_step", *[f"test/{t}" for t in tests],
                    "steps", "ended", "wall_s", "host", "error", "dir"])
        for j in jobs:
            w.writerow([j.num, j.status, *[j.overrides.get(k, "") for k in keys], j.monitor or "", _blank(j.best),
                        _blank(j.best_step), *[_blank(j.test.get(t)) for t in tests], _blank(j.steps), j.ended,
                        _blank(j.wall_s), j.host or "", j.error or "", j.dir.name])


def markdown(jobs: list[Job], title: str, skipped: dict[str, str] | None = None) -> str:
    """A Markdown table of the ranked jobs; overrides all jobs share are listed once above it, the job dirs that
    could not be read (dir name -> why) below it."""
    keys = swept_keys(jobs)
    common = [f"{k}={v}" for k, v in jobs[0].overrides.items() if k not in keys]
    monitors = {j.monitor for j in jobs if j.monitor}
    counts = Counter(j.status for j in jobs)
    plural = "s" if len(jobs) > 1 else ""
    lines = [f"# Sweep {title}", "", f"{len(jobs)} job{plural}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + "."]
    if len(monitors) == 1:
        (monitor,) = monitors
        better = "higher" if next(j.maximize for j in jobs if j.monitor) else "lower"
        lines.append(f"Ranked by the best {monitor} of each job ({better} is better).")
        value_header = f"best {monitor}"
    else:
        value_header = "best (monitor)"
    if common:
        lines.append("Every job: " + " ".join(f"`{c}`" for c in common) + ".")
    tests = _test_keys(jobs)
    header = ["job", "status", *keys, value_header, "best step", *[f"test/{t}" for t in tests], "steps", "wall s",
              "error"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for j in jobs:
        value = _fmt(j.best) + (f" ({j.monitor})" if len(monitors) > 1 and j.best is not None else "")
        row = [str(j.num), j.status, *[_short(j.overrides.get(k, "")) for k in keys], value, str(_blank(j.best_step)),
               *[_fmt(j.test.get(t)) for t in tests], _steps(j), _fmt(j.wall_s, ".1f"),
               (j.error or "").replace("|", "\\|")]
        lines.append("| " + " | ".join(row) + " |")
    if skipped:
        lines += ["", f"Skipped {len(skipped)} job dir{'s' if len(skipped) > 1 else ''} that could not be read:"]
        lines += [f"- `{name}`: {why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"


def _steps(job: Job) -> str:
    """Steps done, and what ended training if not its step limit: a trial cut short by trainer.max_time shows."""
    return str(_blank(job.steps)) + (f" ({job.ended.replace('_', ' ')})" if job.ended else "")


def plot(jobs: list[Job], path: Path, title: str = "sweep") -> bool:
    """The monitored value against each swept key, one panel per key; failed and died jobs as red x at the
    bottom. False (and no file) when there is nothing to plot."""
    keys = swept_keys(jobs)
    scored = [j for j in jobs if j.best is not None and math.isfinite(j.best)]
    monitors = {j.monitor for j in scored}
    if not keys or not scored:
        return False
    from matplotlib.figure import Figure  # a Figure of its own: never touches pyplot's backend
    from matplotlib.ticker import NullFormatter

    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    figure = Figure(figsize=(max(4.2 * cols, 6.4), 3.4 * rows + 0.4), dpi=100, layout="constrained")
    lost = [j for j in jobs if j.status in ("failed", "died")]
    ylabel = f"best {next(iter(monitors))}" if len(monitors) == 1 else "best monitored value"
    for i, key in enumerate(keys):
        ax = figure.add_subplot(rows, cols, i + 1)
        values = [j.overrides.get(key) for j in jobs]
        numbers = _numbers(values)
        if numbers is not None:
            x = dict(zip((j.num for j in jobs), numbers, strict=True))
            written = dict(zip(numbers, values, strict=True))  # as on the command line: 0.003, not 3e-3 ticks
            present = sorted(v for v in written if v is not None)
            if present[0] > 0 and present[-1] / present[0] >= 10:
                ax.set_xscale("log")
            if len(present) <= 6 and all(len(written[v]) <= 6 for v in present):  # a list or choice: a tick each
                ax.set_xticks(present, [written[v] for v in present])
                ax.minorticks_off()
            else:
                ax.xaxis.set_minor_formatter(NullFormatter())  # log axes label minor ticks too: they overlap
        else:
            labels = sorted({v for v in values if v is not None}, key=str)
            x = {j.num: labels.index(j.overrides[key]) if key in j.overrides else None for j in jobs}
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        points = [(x[j.num], j.best) for j in scored if x[j.num] is not None]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=28, alpha=0.8)
        best = scored[0]  # ranked: the best job first
        if x[best.num] is not None:
            ax.scatter([x[best.num]], [best.best], s=120, facecolors="none", edgecolors="tab:green", label="best")
        dead = [x[j.num] for j in lost if x[j.num] is not None]
        if dead:  # on the bottom edge (y in axes units); their x still widens the axis
            ax.scatter(dead, [0.03] * len(dead), marker="x", color="tab:red", transform=ax.get_xaxis_transform(),
                       label="failed / died")
            ax.update_datalim([(v, scored[-1].best) for v in dead])
            ax.autoscale_view()
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    figure.suptitle(f"{title}\n{ylabel} of each job ({len(scored)} of {len(jobs)} jobs have one)", fontsize=10)
    figure.savefig(path)
    return True


def _numbers(values: list[str | None]) -> list[float | None] | None:
    """The values as floats (None where a job lacks the key), or None if any is not a number."""
    try:
        return [None if v is None else float(v) for v in values]
    except ValueError:
        return None


# ---- small helpers --------------------------------------------------------------------------------------
def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _short(value: str) -> str:
    """An override's value for the table: long floats (Optuna's 0.0025408565668819686) to 4 digits."""
    try:
        return value if len(value) <= 8 else format(float(value), ".4g")
    except ValueError:
        return value


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "" if v is None else format(v, spec)


def _blank(v: Any) -> Any:
    return "" if v is None else v


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or caught half-written by a reader on another host
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a summary read at any moment sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    """``lstm-sweep-summary DIR``: write DIR/sweep_summary.{csv,md,png} and print the table."""
    p = argparse.ArgumentParser(prog="lstm-sweep-summary", description="The summary of a sweep dir: one row per job "
                                "(overrides, best monitored value, test metrics, wall time, status) as CSV, Markdown "
                                "and a plot, written into the dir; the table is printed too.")
    p.add_argument("sweep_dir", help="a multirun dir of lstm-train -m (running, finished or died)")
    args = p.parse_args(argv)
    logging.basicConfig(format=f"{p.prog}: %(message)s")  # a job dir it skips: one line each on stderr
    try:
        paths = write_summary(args.sweep_dir)
    except (ValueError, OSError) as e:
        print(f"lstm-sweep-summary: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(paths[1].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)


if __name__ == "__main__":
    main()
