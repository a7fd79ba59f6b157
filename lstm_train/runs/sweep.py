"""A sweep's bookkeeping: each job's status while it runs, and the summary of the whole sweep.

:class:`SweepSummary` is a Hydra callback (conf/config.yaml, ``hydra.callbacks``). In a job's own process it
writes ``<job dir>/job_status.json`` when the job starts (running: host, pid, start time) and when it ends
(completed, pruned or failed with the error's first line; wall time; torch threads). In the sweeping process it
writes ``sweep_summary.csv``, ``.md`` and ``.png`` into the sweep dir when the multirun ends, or when that
process exits on an error (a failed job, Ctrl-C). ``lstm-sweep-summary DIR`` writes the same files from the
directory alone: for a sweep that is still running, or died.

When the sweep varies the replicate key (trainer.seed unless told otherwise), the jobs are also grouped by
their other swept overrides: n, mean and std of each group's best monitored value and test metrics, ranked by
the mean (``sweep_summary_groups.csv``, a second table in the .md, ``sweep_summary_groups.png`` with error bars);
with a baseline (``model.variant=v``) each group's test metric is compared with the baseline's by Welch's
t-test, as Greff et al. compared LSTM variants.

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
from lstm_train.errors import ConfigError, Pruned
from lstm_train.runs import rundir
from lstm_train.tasks import metric_text

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"
SUMMARY = "sweep_summary"  # .csv, .md, .png; the groups over replicates: sweep_summary_groups.csv, .png
REPLICATE = "trainer.seed"  # the key whose values are replicates of one configuration


# ---- the callback ---------------------------------------------------------------------------------------
class SweepSummary(Callback):
    """Job status files in every multirun job; the summary at the end of the multirun. ``replicate`` and
    ``baseline`` (``hydra.callbacks.sweep_summary.*``) are lstm-sweep-summary's --replicate and --baseline."""

    def __init__(self, replicate: str = REPLICATE, baseline: str | None = None) -> None:
        self.sweep_dir: Path | None = None
        self.before: dict[Path, tuple[bytes | None, dict[Path, bytes]]] = {}  # by job dir: status file, Hydra's files
        self.replicate, self.baseline = replicate, baseline

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
        if isinstance(error, Pruned):  # stopped by an Optuna study's pruner: not a failure
            best = error.best and {"value": error.best["value"], "step": error.best["step"]}
            status.update(status="pruned", steps=error.step, best=best, last={error.monitor: error.value})
        elif error is not None:
            status.update(status="failed", error=_one_line(error))
        _write_json(path, status)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        # A job dir that holds a run (a sweep run again into its dir) is refused by lstm-train, but only after
        # Hydra rewrote its .hydra/ and appended to its train.log: what _put_back_refused undoes.
        self.before = {d: (_read_bytes(d / STATUS_FILE), rundir.snapshot(d)) for d in _job_dirs(self.sweep_dir)}
        # on_multirun_end does not run when the sweep stops on an error (a failed job, Ctrl-C): summarize then
        atexit.register(self._summarize)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._summarize)
        self._summarize()

    def _put_back_refused(self) -> None:
        """Job dirs whose status file this sweep left alone (their jobs were refused, or not run) get back the
        files Hydra's job start rewrote."""
        for job_dir, (status, files) in self.before.items():
            if _read_bytes(job_dir / STATUS_FILE) == status:
                try:
                    rundir.restore(job_dir, files)
                except OSError as e:
                    log.warning("could not put back %s as it was: %s", job_dir, e.strerror or e)
        self.before = {}

    def _summarize(self) -> None:
        self._put_back_refused()
        if self.sweep_dir is None or not any(_job_dirs(self.sweep_dir)):
            return
        try:
            try:
                paths = write_summary(self.sweep_dir, self.replicate, self.baseline)
            except BaselineError as e:  # e.g. an odyssey experiment run without v, or one seed: the rest holds
                log.warning("sweep summary: %s; written without the t-test", e)
                paths = write_summary(self.sweep_dir, self.replicate)
        except Exception as e:  # a summary must never turn a finished sweep into a failed one
            log.warning("sweep summary failed: %s", _one_line(e))
            return
        log.info("sweep summary: %s", paths[1])


def _refused(config: DictConfig) -> bool:
    """Whether lstm-train will refuse the job because its dir holds a run that the job would not continue (as
    when a finished sweep is run again into its sweep dir with hydra/sweeper=basic), or that another process is
    running (the same sweep started twice at once): :func:`lstm_train.runs.rundir.resume_path`'s and the lock's rules.
    Nothing of that run may change."""
    out_dir = Path(config.hydra.runtime.output_dir)
    try:
        rundir.check_free(out_dir)
        resume = rundir.job_resume(OmegaConf.select(config, "trainer.resume"), config.hydra, out_dir)
        rundir.resume_path(resume, out_dir)
    except ConfigError as e:
        return e.key == "hydra.run.dir"
    return False


def _read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


# ---- reading a sweep dir --------------------------------------------------------------------------------
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


# ---- the summary ----------------------------------------------------------------------------------------
def write_summary(sweep_dir: str | Path, replicate: str = REPLICATE, baseline: str | None = None,
                  strict: bool = False) -> list[Path]:
    """sweep_summary.csv, .md and (when some job has a value and a key was swept) .png; when the replicate key
    is swept, sweep_summary_groups.csv and .png too (and the groups' table in the .md). Returns their paths.
    Raises ValueError for a baseline (``key=value``) that names no group, and (``strict``: a key the user
    named) for a replicate key the sweep does not vary."""
    sweep_dir = Path(sweep_dir).expanduser()
    if baseline is not None:
        parse_baseline(baseline)  # its form first: a typo is told before any dir is read
    jobs, skipped = collect(sweep_dir)
    jobs = ranked(jobs)
    found = grouped(jobs, replicate)
    if strict and found is None:
        raise ValueError(f"--replicate {replicate}: the jobs of {sweep_dir} do not differ in it; name a key the "
                         "sweep varies")
    if baseline is not None:
        check_baseline(found, replicate, baseline)
    out = sweep_dir / SUMMARY
    paths = [out.with_suffix(".csv"), out.with_suffix(".md")]
    write_csv(jobs, paths[0])
    text = markdown(jobs, sweep_dir.name, skipped)
    if found is not None:
        text += "\n" + groups_markdown(found, replicate, baseline)
    paths[1].write_text(text)
    png = out.with_suffix(".png")
    if plot(jobs, png, sweep_dir.name):
        paths.append(png)
    else:
        png.unlink(missing_ok=True)  # an earlier summary's plot would no longer match the table
    groups_out = sweep_dir / f"{SUMMARY}_groups"
    for suffix in (".csv", ".png"):  # an earlier summary's, of a sweep that has since lost its replicates
        groups_out.with_suffix(suffix).unlink(missing_ok=True)
    if found is not None:
        write_groups_csv(found, groups_out.with_suffix(".csv"), baseline)
        paths.append(groups_out.with_suffix(".csv"))
        if plot_groups(found, groups_out.with_suffix(".png"), f"{sweep_dir.name}\nover {replicate}", baseline):
            paths.append(groups_out.with_suffix(".png"))
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


# ---- groups over replicates (seeds) --------------------------------------------------------------------
@dataclass
class Group:
    """The jobs that differ only in the replicate key. Only completed jobs give values; the others are counted."""
    key: dict[str, str]  # the other swept overrides (a key some jobs lack: "")
    jobs: list[Job]

    @property
    def done(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "completed"]

    def count(self, *statuses: str) -> int:
        return sum(j.status in statuses for j in self.jobs)

    @property
    def monitor(self) -> str | None:
        return next((j.monitor for j in self.jobs if j.monitor), None)

    @property
    def maximize(self) -> bool:
        return bool(next((j.maximize for j in self.jobs if j.monitor), False))

    def values(self, metric: str | None = None) -> list[float]:
        """The completed jobs' best monitored values (metric None) or their test metric, finite ones only."""
        found = [j.best if metric is None else j.test.get(metric) for j in self.done]
        return [v for v in found if v is not None and math.isfinite(v)]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key.items()) or "all jobs"


def grouped(jobs: list[Job], replicate: str = REPLICATE) -> list[Group] | None:
    """The jobs grouped by their swept overrides other than ``replicate``, best mean first (as :func:`ranked`
    orders jobs; groups without a value last); None when the sweep does not vary ``replicate``."""
    keys = swept_keys(jobs)
    if replicate not in keys:
        return None
    others = [k for k in keys if k != replicate]
    groups: dict[tuple[str, ...], Group] = {}
    for j in jobs:
        values = tuple(j.overrides.get(k, "") for k in others)
        groups.setdefault(values, Group(dict(zip(others, values, strict=True)), [])).jobs.append(j)

    def order(g: Group) -> tuple:
        mean = mean_std(g.values())[0]
        if mean is None:
            return (1, "", 0.0)
        return (0, g.monitor or "", -mean if g.maximize else mean)

    return sorted(groups.values(), key=order)  # stable: equal means keep the jobs' order


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator, as Welch's test uses); None where
    undefined (no value; a single value's std)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """Welch's unequal-variances t-test of mean(a) against mean(b): (t, degrees of freedom, two-sided p),
    the values of ``scipy.stats.ttest_ind(a, b, equal_var=False)``, without needing scipy at run time.

    t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b) with sample variances s^2; the degrees of freedom by
    Welch-Satterthwaite, (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)); the
    p-value is P(|T| >= |t|) for Student's T with those degrees of freedom, which equals the regularized
    incomplete beta function I_x(df/2, 1/2) at x = df / (df + t^2). None if either sample has fewer than 2
    values. Both samples without spread: t = ±inf and p = 0 for different means, all nan for equal ones (df
nan in both cases), as scipy has it."""
    if len(a) < 2 or len(b) < 2:
        return None
    (mean_a, sd_a), (mean_b, sd_b) = mean_std(a), mean_std(b)
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)
    if va + vb == 0:
        if mean_a == mean_b:
            return math.nan, math.nan, math.nan
        return math.copysign(math.inf, mean_a - mean_b), math.nan, 0.0
    t = (mean_a - mean_b) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, incomplete_beta(df / 2, 0.5, df / (df + t * t))


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]: its continued
    fraction (evaluated by Lentz's method), which converges fast for x < (a + 1) / (a + b + 2); above that,
    through the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - incomplete_beta(b, a, 1.0 - x)
    # x^a (1-x)^b / (a B(a, b)) times 1 / (1 + d1 / (1 + d2 / (1 + ...)))
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300  # keeps Lentz's C and D off zero
    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, 400):
        m = j // 2
        if j % 2:  # d_{2m+1}
            term = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_{2m}
            term = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + term * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + term / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front / f


class BaselineError(ValueError):
    """A baseline that is not KEY=VALUE or names no group of replicates: the one line why."""


def parse_baseline(baseline: str) -> tuple[str, str]:
    """``key=value`` as (key, value); BaselineError if it is not of that form."""
    key, eq, value = baseline.partition("=")
    if not eq or not key or not value:
        raise BaselineError(f"--baseline {baseline}: not KEY=VALUE; give the group the others are compared with, "
                         "e.g. --baseline model.variant=v")
    return key, value


def check_baseline(groups: list[Group] | None, replicate: str, baseline: str) -> None:
    """BaselineError unless the baseline is one of the groups' overrides (it needs the replicates to compare)."""
    key, value = parse_baseline(baseline)
    if groups is None:
        raise BaselineError(f"--baseline {baseline}: the sweep does not vary {replicate}, so there are no replicates "
                         "to compare; sweep it (trainer.seed=0,1,2) or name the replicate key with --replicate")
    present = sorted({g.key[key] for g in groups if key in g.key})
    if value not in present:
        what = f"its values are {', '.join(present)}" if present else "it is not a swept key"
        raise BaselineError(f"--baseline {baseline}: no group has {key}={value} ({what}); choose one of them")


def _baseline_of(group: Group, groups: list[Group], baseline: str) -> Group | None:
    """The group that differs from ``group`` only in the baseline's key, holding the baseline's value."""
    key, value = parse_baseline(baseline)
    want = {**group.key, key: value}
    return next((g for g in groups if g.key == want), None)


def _monitor(groups: list[Group]) -> str | None:
    """The monitor all groups share, or None (a sweep over tasks monitors val/acc in some, val/bpc in others)."""
    monitors = {g.monitor for g in groups if g.monitor}
    return next(iter(monitors)) if len(monitors) == 1 else None


def _compared(groups: list[Group]) -> str | None:
    """The test metric the t-test compares: the monitor's own (val/acc: test acc) when all groups share the
    monitor and every completed job has it, else None: the best monitored value."""
    monitor = _monitor(groups)
    metric = monitor.rpartition("/")[2] if monitor else None
    done = [j for g in groups for j in g.done]
    return metric if done and all(metric in j.test for j in done) else None


@dataclass
class GroupStats:
    """One row of the groups' table."""
    group: Group
    rank: int | None  # 1: the best mean; None: no completed job
    best: tuple[float | None, float | None]  # mean, std of the best monitored values
    test: dict[str, tuple[float | None, float | None]]  # test metric -> mean, std
    welch: tuple[float, float, float] | None = None  # t, df, p against the baseline group


def group_stats(groups: list[Group], baseline: str | None = None) -> list[GroupStats]:
    """The groups' means and stds, in their order; with a baseline, Welch's test against it (None for the
    baseline itself, and where a group has fewer than 2 values, no baseline group or another monitor)."""
    tests = _test_keys([j for g in groups for j in g.jobs])
    compared = _compared(groups)
    rows = []
    for g in groups:
        best = mean_std(g.values())
        row = GroupStats(g, len(rows) + 1 if best[0] is not None else None, best,
                         {t: mean_std(g.values(t)) for t in tests})
        base = _baseline_of(g, groups, baseline) if baseline is not None else None
        if base is not None and base is not g and base.monitor == g.monitor:  # never one metric against another
            row.welch = welch(g.values(compared), base.values(compared))
        rows.append(row)
    return rows


def write_groups_csv(groups: list[Group], path: Path, baseline: str | None = None) -> None:
    rows = group_stats(groups, baseline)
    keys, tests = list(groups[0].key), list(rows[0].test)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", *keys, "n", "jobs", "failed", "running", "monitor", "best mean", "best std",
                    *[f"test/{t} {s}" for t in tests for s in ("mean", "std")],
                    *(["t", "df", "p"] if baseline is not None else [])])
        for r in rows:
            g = r.group
            w.writerow([_blank(r.rank), *g.key.values(), len(g.done), len(g.jobs), g.count("failed", "died"),
                        g.count("running", "unknown"), g.monitor or "", *map(_blank, r.best),
                        *[_blank(v) for t in tests for v in r.test[t]],
                        *([_blank(v) for v in (r.welch or (None,) * 3)] if baseline is not None else [])])


def groups_markdown(groups: list[Group], replicate: str, baseline: str | None = None) -> str:
    """The groups' table: mean ± std per group, best mean first; with a baseline, Welch's t-test of each
    group's test metric against the baseline group's."""
    rows = group_stats(groups, baseline)
    keys, tests = list(groups[0].key), list(rows[0].test)
    monitor = _monitor(groups)
    better = f"{monitor} ({'higher' if groups[0].maximize else 'lower'} is better)" if monitor else \
        "monitored value (each in its monitor's direction)"
    lines = [f"## Over {replicate}", "",
             f"{len(groups)} group{'s' if len(groups) > 1 else ''} of jobs that differ only in {replicate}, ranked "
             f"by the mean of their best {better}. n: completed jobs of the group's jobs, "
             "whose values give the mean ± sample std; failed counts failed and died jobs, running the running "
             "and unknown ones."]
    header = ["rank", *keys, "n", "failed", "running", f"best {monitor or '(monitor)'}", *[f"test/{t}" for t in tests]]
    if baseline is not None:
        compared = _compared(groups)
        what = f"test/{compared}" if compared else "best monitored value"
        lines.append(f"Welch's t-test of each group's {what} against the group with {baseline} (and the same "
                     "other overrides): t > 0 is a higher mean, p two-sided.")
        header += ["t", "p"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        g = r.group
        cells = [str(_blank(r.rank)), *[_short(v) for v in g.key.values()], f"{len(g.done)} of {len(g.jobs)}",
                 str(g.count("failed", "died")), str(g.count("running", "unknown")),
                 _pm(*r.best) + (f" ({g.monitor})" if monitor is None and g.monitor else ""),
                 *[_pm(*r.test[t]) for t in tests]]
        if baseline is not None:
            cells += [_fmt(r.welch[0], ".2f"), _fmt(r.welch[2], ".3g")] if r.welch else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pm(mean: float | None, std: float | None) -> str:
    return "" if mean is None else _fmt(mean) + ("" if std is None else f" ± {_fmt(std)}")


def plot_groups(groups: list[Group], path: Path, title: str = "sweep", baseline: str | None = None) -> bool:
    """Each group's mean ± std (error bars) of the best monitored value and, beside it, of the compared test
    metric, in the table's order; each completed job a dot, the baseline's mean a dashed line. False (and no
    file) when no group has a value."""
    if not any(g.values() for g in groups):
        return False
    from matplotlib.figure import Figure

    compared = _compared(groups)
    panels = [(None, f"best {_monitor(groups) or 'monitored value'}")]
    if compared:
        panels.append((compared, f"test/{compared}"))
    keys = list(groups[0].key)
    labels = [(g.key[keys[0]] if len(keys) == 1 else g.label)  # one key: its name on the axis
              + ("" if len(g.done) == len(g.jobs) else f"\n({len(g.done)} of {len(g.jobs)})") for g in groups]
    wide = max(len(line) for label in labels for line in label.splitlines()) > 8
    figure = Figure(figsize=(max(6.4, 0.45 * len(groups) + 2) * len(panels), 4.2 + (1.0 if wide else 0)), dpi=100,
                    layout="constrained")
    base = parse_baseline(baseline) if baseline else None
    for i, (metric, ylabel) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        for x, g in enumerate(groups):
            values = g.values(metric)
            mean, std = mean_std(values)
            if mean is None:
                continue
            ax.scatter([x] * len(values), values, s=12, alpha=0.5, color="tab:gray")
            is_base = base is not None and g.key.get(base[0]) == base[1]
            ax.errorbar([x], [mean], yerr=[std or 0.0], fmt="o", capsize=4,
                        color="tab:orange" if is_base else "tab:blue")
            if is_base:  # one label for the legend, however many baseline groups
                ax.axhline(mean, color="tab:orange", linestyle="--", linewidth=1,
                           label="_" if ax.get_legend_handles_labels()[0] else f"{baseline} (mean)")
        ax.set_xticks(range(len(groups)), labels, rotation=45 if wide else 0, ha="right" if wide else "center")
        if wide_range([v for g in groups for v in g.values(metric)]):
            ax.set_yscale("log")
            ylabel += " (log scale)"
        ax.set_ylabel(ylabel)
        if len(keys) == 1:
            ax.set_xlabel(keys[0])
        ax.grid(True, axis="y", alpha=0.3)
        if base is not None and i == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    n = sum(len(g.done) for g in groups)
    figure.suptitle(f"{title}: mean ± std of {len(groups)} groups ({n} completed jobs)", fontsize=10)
    figure.savefig(path)
    return True


def wide_range(values: Sequence[float]) -> bool:
    """Whether positive values span so much (a diverged group beside the others: 300 bpc against 1.7) that only a
    log scale shows the differences among the rest."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 30


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
    return "" if v is None else metric_text(v, spec)


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
    """``lstm-sweep-summary DIR [--replicate KEY] [--baseline KEY=VALUE]``: write DIR/sweep_summary.{csv,md,png}
    (and the groups over replicates) and print the table."""
    p = argparse.ArgumentParser(prog="lstm-sweep-summary", description="The summary of a sweep dir: one row per job "
                                "(overrides, best monitored value, test metrics, wall time, status) as CSV, Markdown "
                                "and a plot, written into the dir; the table is printed too. When the sweep varies "
                                "the replicate key, also the mean and std of each group of replicates.")
    p.add_argument("sweep_dir", help="a multirun dir of lstm-train -m (running, finished or died)")
    p.add_argument("--replicate", metavar="KEY", help="the override whose values are replicates of one "
                   f"configuration (default {REPLICATE}): jobs that differ only in it form a group")
    p.add_argument("--baseline", metavar="KEY=VALUE", help="compare each group with the group that has KEY=VALUE "
                   "(and the same other overrides) by Welch's t-test, e.g. model.variant=v")
    args = p.parse_args(argv)
    logging.basicConfig(format=f"{p.prog}: %(message)s")  # a job dir it skips: one line each on stderr
    try:
        paths = write_summary(args.sweep_dir, args.replicate or REPLICATE, args.baseline,
                              strict=args.replicate is not None)
    except (ValueError, OSError) as e:
        print(f"lstm-sweep-summary: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(paths[1].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)


if __name__ == "__main__":
    main()
