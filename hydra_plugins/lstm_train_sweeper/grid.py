"""The grid sweeper that continues its sweep dir: ``hydra/sweeper=grid``, lstm-train's default
(conf/hydra/sweeper/grid.yaml).

Hydra's basic sweeper numbers the jobs by their place in the grid. Started again with the same sweep
dir, this subclass skips the jobs whose dir holds their metrics.json (their dirs untouched; their stored best
value is their return), launches the others (a job whose dir holds a last.pt continues from it:
:func:`lstm_train.runs.rundir.job_resume`) and refuses a grid that would put other overrides under a number that
already has a job dir. Launchers number a launch's jobs from its first one, so the jobs left run in launches of
consecutive numbers. A changed grid is refused rather than given new numbers: a job's number is its place in
the grid, in the job dirs' names and in the summary, and stays so only if the grid does."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher

from lstm_train.errors import REPORTED, ConfigError
from lstm_train.runs.jobs import Job, earlier_jobs

log = logging.getLogger(__name__)
IGNORED = ("trainer.resume",)  # overrides that do not make another job (a start may add or drop them)


class ResumableGridSweeper(BasicSweeper):
    """Hydra's basic sweeper, continuing the sweep dir it is started on (see the module's docstring)."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        earlier = earlier_jobs(sweep_dir)
        if earlier:
            parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
            grid = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]), None)[0]
            check_same_grid(sweep_dir, earlier, grid)
            done = {n for n, job in earlier.items() if (job.dir / "metrics.json").is_file() and n < len(grid)}
            cut = sum((job.dir / "checkpoints" / "last.pt").is_file() for n, job in earlier.items()
                      if n < len(grid) and n not in done)
            log.info("Continuing sweep %s: %d of %d jobs finished (skipped), %d to continue from their last.pt, "
                     "%d to start", sweep_dir, len(done), len(grid), cut, len(grid) - len(done) - cut)
            self.launcher = SkipFinished(self.launcher, {n: earlier[n] for n in done})
        self.launcher = ReportedErrorsAlone(self.launcher)
        return super().sweep(arguments)


def check_same_grid(sweep_dir: Path, earlier: dict[int, Job], grid: Sequence[Sequence[str]]) -> None:
    """A ConfigError if a job number that has a job dir gets other overrides in this grid (a value added,
    dropped or moved in a list: Hydra numbers jobs by their place in the grid)."""
    for num, job in sorted(earlier.items()):
        if num >= len(grid):
            continue  # a longer grid before: that job is left as it is
        old = {k: v for k, v in job.overrides.items() if k not in IGNORED}
        new = {k: v for k, v in (o.partition("=")[::2] for o in grid[num]) if k not in IGNORED}
        if old != new:
            held = " ".join(f"{k}={v}" for k, v in old.items() if new.get(k) != v) or "nothing more"
            given = " ".join(f"{k}={v}" for k, v in new.items() if old.get(k) != v) or "nothing more"
            raise ConfigError("hydra.sweep.dir", f"{sweep_dir} holds job {num} with {held}, where this sweep's job "
                              f"{num} has {given}: a sweep started again must give the same overrides and values, "
                              "in the same order; start it so, or choose another hydra.sweep.dir")


class SkipFinished:
    """A launcher's stand-in that returns the stored result of the finished jobs and launches the rest. (Not a
    Launcher subclass: Hydra would list it as a launcher plugin of its own.)"""

    def __init__(self, launcher: Launcher, done: dict[int, Job]) -> None:
        self.launcher, self.done = launcher, done

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns: list[JobReturn] = []
        numbered = enumerate(job_overrides, initial_job_idx)
        for skip, run in itertools.groupby(numbered, key=lambda pair: pair[0] in self.done):
            run = list(run)
            if not skip:
                returns += self.launcher.launch([o for _, o in run], initial_job_idx=run[0][0])
                continue
            for num, overrides in run:
                job = self.done[num]
                best = "" if job.best is None else f", best {job.monitor} {job.best:.4f}"
                log.info("\t#%d : %s: finished before%s; skipped (%s)", num, " ".join(overrides), best, job.dir.name)
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=job.best))
        return returns


class ReportedErrorsAlone:
    """A launcher's stand-in that raises the first failed job's error itself when lstm-train reports it on one
    line (:data:`~lstm_train.errors.REPORTED`), as Hydra's sweeper would next, but without the line Hydra's
    JobReturn.return_value first writes to stderr (``Error executing job with overrides: [...]``): the sweep
    summary, written on the way out, lists the failed jobs with their overrides. Any other error takes Hydra's
    way: its line, then the traceback."""

    def __init__(self, launcher: Launcher | SkipFinished) -> None:
        self.launcher = launcher

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        failed = next((r for r in returns if r.status != JobStatus.COMPLETED), None)
        if failed is not None and isinstance(failed._return_value, REPORTED):  # .return_value writes that line
            raise failed._return_value
        return returns
