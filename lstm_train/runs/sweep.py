"""A sweep's bookkeeping: each job's status while it runs, and the summary of the whole sweep.

:class:`SweepSummary` is a Hydra callback (conf/config.yaml, ``hydra.callbacks``). In a job's own process it
writes ``<job dir>/job_status.json`` when the job starts (running: host, pid, start time) and when it ends
(completed, pruned or failed with the error's first line; wall time; torch threads). In the sweeping process it
writes ``sweep_summary.csv``, ``.md`` and ``.png`` into the sweep dir when the multirun ends, or when that
process exits on an error (a failed job, Ctrl-C). ``lstm-sweep-summary DIR`` writes the same files from the
directory alone: for a sweep that is still running, or died.

:func:`write_summary` writes them for both: the jobs as :mod:`lstm_train.runs.jobs` reads them, ranked by
:mod:`lstm_train.runs.summary`, and grouped over replicates by :mod:`lstm_train.runs.replicates`.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lstm_train.errors import ConfigError, Pruned, quiet_broken_pipe
from lstm_train.runs import rundir
from lstm_train.runs.jobs import STATUS_FILE, collect, job_dirs, one_line, read_json
from lstm_train.runs.replicates import (
    REPLICATE,
    BaselineError,
    check_baseline,
    grouped,
    groups_markdown,
    parse_baseline,
    plot_groups,
    write_groups_csv,
)
from lstm_train.runs.summary import markdown, plot, ranked, write_csv

log = logging.getLogger(__name__)

SUMMARY = "sweep_summary"  # .csv, .md, .png; the groups over replicates: sweep_summary_groups.csv, .png


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
        status = read_json(path)
        if not isinstance(status, dict):
            status = {"job": config.hydra.job.num}
        now, started = time.time(), status.get("started")
        status.update(status="completed", ended=now, wall_s=now - started if isinstance(started, int | float) else None,
                      threads=torch.get_num_threads())
        if isinstance(error, Pruned):  # stopped by an Optuna study's pruner: not a failure
            best = error.best and {"value": error.best["value"], "step": error.best["step"]}
            status.update(status="pruned", steps=error.step, best=best, last={error.monitor: error.value})
        elif error is not None:
            status.update(status="failed", error=one_line(error))
        _write_json(path, status)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        # A job dir that holds a run (a sweep run again into its dir) is refused by lstm-train, but only after
        # Hydra rewrote its .hydra/ and appended to its train.log: what _put_back_refused undoes.
        self.before = {d: (_read_bytes(d / STATUS_FILE), rundir.snapshot(d)) for d in job_dirs(self.sweep_dir)}
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
        if self.sweep_dir is None or not any(job_dirs(self.sweep_dir)):
            return
        try:
            try:
                paths = write_summary(self.sweep_dir, self.replicate, self.baseline)
            except BaselineError as e:  # e.g. an odyssey experiment run without v, or one seed: the rest holds
                log.warning("sweep summary: %s; written without the t-test", e)
                paths = write_summary(self.sweep_dir, self.replicate)
        except Exception as e:  # a summary must never turn a finished sweep into a failed one
            log.warning("sweep summary failed: %s", one_line(e))
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a summary read at any moment sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ---- the summary files ----------------------------------------------------------------------------------
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
    with quiet_broken_pipe():  # lstm-sweep-summary DIR | head
        print(paths[1].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)


if __name__ == "__main__":
    main()
