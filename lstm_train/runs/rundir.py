"""The run dir: one run in it at a time, and nothing left or changed in it by a run that is refused.

- :class:`EarlyCheck`, a Hydra callback: its ``on_run_start`` runs before Hydra's job runner makes the run dir,
  writes ``.hydra/`` and opens train.log, so the mistakes it can see refuse a run without a trace: a bad value,
  an interpolation that does not resolve (the job's keys, hydra.run and hydra.job),
  a dir that holds another run, a dir another process is running in. (Hydra turns an Exception from a callback
  into a warning, so it raises :class:`Refused`, a BaseException.)
- :func:`claim`: the job holds an flock on ``<run dir>/.lock`` for its life (a single run takes it in
  EarlyCheck, before Hydra writes anything); the OS releases it when the process
  ends, however it ends. Only the process that owns the run dir (the Hydra job) takes it, never the
  data-parallel ranks. A run refused later (a data file missing, a checkpoint that does not fit) puts the dir
  back as it was: removed if the run made it, else with its own .hydra/, train.log and .lock.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import fnmatch
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lstm_train.config import check_interpolations, validate
from lstm_train.errors import ConfigError
from lstm_train.runs.checkpoint import resume_file

log = logging.getLogger(__name__)

LOCK = ".lock"
GRID_SWEEPER = "hydra_plugins.lstm_train_sweeper.grid.ResumableGridSweeper"  # conf/hydra/sweeper/grid.yaml
# what a run writes into its dir before it trains (names or patterns): Hydra's, the lock, runs/provenance.py's
HYDRA_FILES = (".hydra", "train.log", LOCK, "provenance.*")


@dataclass
class _Before:
    """A run dir as EarlyCheck found it, to put back if the run is refused after Hydra wrote into it."""

    made: Path | None  # the first of its ancestors (or itself) that did not exist; None: the dir was there
    files: dict[Path, bytes]  # the files a run's start rewrites (HYDRA_FILES) and their content


# hydra's keys that a single run resolves and a user sets (the others need values Hydra sets in the job, or are
# a sweep's, or --help's)
USER_KEYS = ("run", "job")
_before: dict[Path, _Before] = {}
_held: dict[Path, int] = {}  # run dir -> the descriptor of its lock, taken by EarlyCheck for the job's claim


class Refused(BaseException):
    """A run refused before Hydra started its job; ``error`` says why."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


class EarlyCheck(Callback):
    """Checks a single run before Hydra touches its dir (conf/config.yaml registers it)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # for ${hydra:...} and ${threads_per_job:} in the job's config
        job = copy.deepcopy(config)
        with read_write(job), open_dict(job):
            del job["hydra"]
        try:
            validate(job)
            check_interpolations(config.hydra, USER_KEYS)  # hydra.run.dir=${oops}: before Hydra meets it
            out_dir = Path(os.path.abspath(str(config.hydra.run.dir)))  # as Hydra's run_job makes it
            check_free(out_dir)
            resume_path(job.trainer.resume, out_dir)
        except ConfigError as e:
            raise Refused(e) from None
        except Exception:  # anything else: the job meets it again and reports it
            return
        made = next((p for p in reversed([out_dir, *out_dir.parents]) if not p.exists()), None)
        before = _Before(made, snapshot(out_dir))
        # The lock, taken now, before Hydra writes into the dir: a second run started at the same moment, which
        # passed check_free too, is refused here, before it writes its .hydra/ over this one's.
        try:
            _held[out_dir] = _take(out_dir)
        except ConfigError as e:  # nothing to put back: the dir and its lock file are the holder's
            raise Refused(e) from None
        except OSError:  # a dir that cannot be made or written: the job meets it again and reports it
            _undo(out_dir, before)
            return
        _before[out_dir] = before


def resume_path(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``trainer.resume`` as given, or with ``auto`` the run dir's own last.pt
    if there is one. Refuses to start in a run dir that holds another run (checkpoints, or metrics.json)."""
    own = out_dir / "checkpoints" / "last.pt"
    if resume == "auto":
        if own.is_file():
            return own
        resume = None
    path = None if resume is None else resume_file(resume)  # a run dir: its last.pt
    if path is not None and path.resolve() == own.resolve():
        return path
    held = [p.name for p in (own, own.with_name("best.pt")) if p.is_file()]
    if held:
        raise ConfigError(
            "hydra.run.dir", f"{out_dir} already holds a run's checkpoints ({', '.join(held)}), which this run "
            "would overwrite; continue that run with trainer.resume=auto, or choose another hydra.run.dir",
        )
    if (out_dir / "metrics.json").is_file():
        raise ConfigError(
            "hydra.run.dir", f"{out_dir} already holds a run's metrics.json (without checkpoints), which this run "
            "would overwrite; choose another hydra.run.dir",
        )
    return path


def job_resume(resume: str | None, hydra_cfg: DictConfig, out_dir: Path) -> str | None:
    """``trainer.resume`` as the job uses it: as given, but ``auto`` for a job of a grid sweep started again
    whose dir holds a last.pt (a job that was killed), which continues from it. The grid sweeper has checked
    that the dir is this job's (the same overrides), and launches no job whose dir holds its metrics.json."""
    if resume is None and grid_job(hydra_cfg) and (out_dir / "checkpoints" / "last.pt").is_file():
        return "auto"
    return resume


def grid_job(hydra_cfg: DictConfig) -> bool:
    """Whether this is a job of lstm-train's grid sweeper, which a sweep started again continues."""
    return hydra_cfg.mode == RunMode.MULTIRUN and OmegaConf.select(hydra_cfg, "sweeper._target_") == GRID_SWEEPER


def warn_if_never_resumed(hydra_cfg: DictConfig, out_dir: Path) -> None:
    """``trainer.resume=auto`` in a run dir named after the time it starts: there is never a last.pt to find."""
    key = "run" if hydra_cfg.mode == RunMode.RUN else "sweep"
    pattern = str(OmegaConf.to_container(hydra_cfg[key], resolve=False)["dir"])
    if "${now:" in pattern and not (out_dir / "checkpoints" / "last.pt").is_file():
        log.warning("trainer.resume=auto: hydra.%s.dir is named after the time it starts (%s), so it never "
                    "holds a last.pt to resume and every start trains afresh; set hydra.%s.dir=DIR, the same on "
                    "every start", key, pattern, key)


# ---- the lock ---------------------------------------------------------------------------------------------
def check_free(out_dir: Path) -> None:
    """Refuse a run dir whose lock another process holds, without creating the lock or writing anything."""
    try:
        fd = os.open(out_dir / LOCK, os.O_RDWR)
    except OSError:  # no lock file: no run has held this dir
        return
    try:
        _lock(fd, out_dir)
    finally:
        os.close(fd)  # and with it the lock, if this took it


@contextmanager
def claim(out_dir: Path, undo_if_refused: bool) -> Iterator[None]:
    """Hold ``out_dir``'s lock while the block runs (a :class:`ConfigError` if another process holds it).

    With ``undo_if_refused``: if the block refuses the run (a ConfigError, or data-parallel workers exiting with
    status 2), put the dir back as EarlyCheck found it, while still holding the lock: a dir the run made is
    removed (if it holds nothing but what Hydra wrote), a dir that was there gets its Hydra files back.
    """
    fd = _held.pop(out_dir, None)
    if fd is None:  # not locked by EarlyCheck (a sweep's job, a call from Python)
        fd = _take(out_dir)
    try:
        try:
            yield
        except (ConfigError, SystemExit) as e:
            if undo_if_refused and (isinstance(e, ConfigError) or e.code == 2) and out_dir in _before:
                _undo(out_dir, _before[out_dir])
            raise
    finally:
        _before.pop(out_dir, None)
        os.close(fd)


def _take(out_dir: Path) -> int:
    """Make ``out_dir`` if needed and lock it, saying in the lock file who holds it; the lock's descriptor."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _lock(fd, out_dir):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"lstm-train (pid {os.getpid()} on {socket.gethostname()}, since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock(fd: int, out_dir: Path) -> bool:
    """Take the lock on ``fd`` (False where the file system has no locks); a ConfigError naming the holder."""
    try:
        for wait in (0.05, 0.1, 0.2, None):  # another start's check_free holds it for an instant: wait that out
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None:
                    raise
                time.sleep(wait)
    except BlockingIOError:
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
        raise ConfigError("hydra.run.dir", f"{out_dir} is in use by {holder}; wait for that run to end (or stop "
                          "it), or choose another hydra.run.dir") from None
    except OSError as e:
        log.warning("cannot lock %s (%s): nothing stops another run from using this run dir at the same time",
                    out_dir / LOCK, e.strerror or e)
        return False
    return True


def _hydra_files(out_dir: Path) -> list[Path]:
    return [p for name in HYDRA_FILES for top in out_dir.glob(name) for p in [top, *top.rglob("*")] if p.is_file()]


def _is_hydra_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in HYDRA_FILES)


def snapshot(out_dir: Path) -> dict[Path, bytes]:
    """The files a run's start rewrites in ``out_dir`` (HYDRA_FILES), to :func:`restore` if it is refused."""
    return {p: p.read_bytes() for p in _hydra_files(out_dir)}


def restore(out_dir: Path, files: dict[Path, bytes]) -> None:
    """Put back the files of a :func:`snapshot` as they were (those written since, removed)."""
    for path in _hydra_files(out_dir):
        if path not in files:
            path.unlink()
    for path, data in files.items():
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    with contextlib.suppress(OSError):  # a .hydra/ the refused run made, now empty
        (out_dir / ".hydra").rmdir()


def _undo(out_dir: Path, before: _Before) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's train.log, which the error line would go to next
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(out_dir):
            root.removeHandler(handler)
            handler.close()
    if before.made is None:
        restore(out_dir, before.files)
        return
    if any(p.is_file() and not _is_hydra_file(p.relative_to(out_dir).parts[0]) for p in out_dir.rglob("*")):
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    for parent in out_dir.parents:  # the parents Hydra made for it, while empty
        if not parent.is_relative_to(before.made):
            break
        try:
            parent.rmdir()
        except OSError:
            break
