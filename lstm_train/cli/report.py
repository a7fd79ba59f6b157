"""How lstm-train reports what stops it: one line on stderr (and in the run's train.log), an exit status, no
traceback; and the command lines it prints (how to resume, how to watch).

:func:`job_errors` wraps one Hydra job, :func:`console_errors` the whole Hydra app as the console script runs it;
:func:`lstm_train.cli.launch.run_worker` reports a data-parallel worker's the same way. HYDRA_FULL_ERROR=1 set
by the user (``wants_traceback``) lets the tracebacks through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lstm_train.config import CONF_DIR, describe_config_error
from lstm_train.errors import REPORTED, ConfigError, command
from lstm_train.runs import rundir
from lstm_train.training import distributed
from lstm_train.training.distributed import World
from lstm_train.training.interrupt import Interrupted, exit_after_stop, interruption

log = logging.getLogger(__name__)


@contextlib.contextmanager
def job_errors() -> Iterator[None]:
    """One Hydra job's failures on one line (exit status 2 for a config mistake, else 1); an interruption that
    saved a checkpoint says how to resume."""
    try:
        try:
            yield
        except Exception as e:  # a stop that library code wrapped in an error of its own (any kind) is the stop
            if (stop := interruption(e)) is not None:
                raise stop from None
            raise
    except REPORTED as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One job of a sweep: Hydra records it as failed and the sweep goes on (a SystemExit would end the
            # whole sweep, and kill the jobs running beside it); main() reports it when the sweep is over.
            log_to_file(f"lstm-train: error: {e}")
            raise
        # SystemExit passes through Hydra's job runner, which would add a line of its own to an Exception.
        fail(f"lstm-train: error: {e}", 2 if isinstance(e, ConfigError) else 1)
    except OSError as e:  # a full disk or a run dir gone read-only: the checkpoints saved so far are intact
        fail(f"lstm-train: error: {describe_os_error(e)}", 1)
    except RuntimeError as e:
        if not distributed.peer_gone(e):
            raise
        fail(f"lstm-train: error: {distributed.PEER_GONE}", 1)
    except Interrupted as e:
        raise reported_stop(e) from None


def reported_stop(stop: Interrupted) -> Interrupted:
    """The stop, in the run's train.log; one that saved a checkpoint says how to go on from there (a grid sweep's
    job: by starting the sweep again)."""
    if stop.checkpoint is None:
        log_to_file(str(stop))
        return stop
    hydra_cfg = HydraConfig.get()
    if rundir.grid_job(hydra_cfg):
        again = f"hydra.sweep.dir={shlex.quote(hydra_cfg.sweep.dir)}"
        message = f"{stop}; to continue the sweep, start it again with {again}"
    else:
        message = f"{stop}; resume with: {resume_command(stop.checkpoint)}"
    log_to_file(message)
    return Interrupted(stop.signum, message, stop.checkpoint)


@contextlib.contextmanager
def console_errors(wants_traceback: bool) -> Iterator[None]:
    """What reaches the console script from the Hydra app: an interruption, a refused run dir, a sweep's failed
    job, and Hydra's own errors (composition, overrides, a run dir it could not make), each on one line."""
    try:
        yield
    except Interrupted as e:
        exit_after_stop(e.exit_code)  # before the line: a second Ctrl-C from here on exits at once
        print(f"lstm-train: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except rundir.Refused as e:  # before Hydra made or touched the run dir
        if wants_traceback:
            raise e.error from None
        print(f"lstm-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    except REPORTED as e:  # a sweep's failed job: Hydra re-raises it after the sweep
        if wants_traceback:
            raise
        print(f"lstm-train: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except Exception as e:
        message = None if wants_traceback else describe_override_error(e, sys.argv[1:]) or describe_config_error(e)
        status = 2
        if message is None and not wants_traceback and isinstance(e, OSError):  # Hydra could not make the run dir
            message, status = describe_os_error(e), 1
        if message is None:
            raise
        print(f"lstm-train: error: {message}", file=sys.stderr)
        sys.exit(status)


@contextlib.contextmanager
def hydra_full_error() -> Iterator[None]:
    """HYDRA_FULL_ERROR=1 while Hydra runs, so that its errors reach us as exceptions; put back afterwards."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def resume_command(checkpoint: Path) -> str:
    """The command line that continues this job: its own overrides, with trainer.resume pointing at ``checkpoint``."""
    overrides = HydraConfig.get().overrides
    kept = [o for o in overrides.task if not o.startswith("trainer.resume=")]
    kept += [o for o in overrides.hydra if o.startswith("hydra.run.dir=")]  # the same dir, if the user chose it
    program = command("lstm-train") if World.from_env().size == 1 else "<your torchrun/srun command> lstm_train.train"
    return f"{program} {shlex.join([*kept, f'trainer.resume={checkpoint.resolve()}'])}"


def fail(message: str, status: int) -> None:
    """Print the one-line error, keep it in the run's train.log too, and exit."""
    print(message, file=sys.stderr)
    log_to_file(message)
    sys.exit(status)


def log_to_file(message: str) -> None:
    """Write a line to the run's train.log only (the console gets its own line on stderr)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def describe_os_error(error: OSError) -> str:
    """One line for a file the run could not write (or make), saying what to check."""
    where = f"{error.filename}: " if error.filename else ""
    return (f"{where}{error.strerror or error}; the run dir must be writable with free space: free some, or "
            "choose another with hydra.run.dir=DIR (checkpoints already saved are intact)")


def value_after(args: list[str], i: int) -> str:
    """What a key given apart from its value (``model.hidden_size 64``, ``--max_steps 10``) at ``args[i]`` is
    shown with as ``key=...``: the next argument when it reads as a value (not a flag, not an override), else VALUE."""
    after = args[i + 1] if i + 1 < len(args) else "-"
    return after if not after.startswith("-") and "=" not in after else "VALUE"


def describe_override_error(error: BaseException, args: list[str]) -> str | None:
    """One line for the command-line mistakes Hydra reports over many lines: a group given a value such as
    ``debug=true``, a comma list (a sweep) without ``-m``, and ``-m`` with ``--cfg`` (or ``--info``)."""
    text = str(error)
    if "Config group override must be a string or a list" in text:
        groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")}
        for arg in args:
            group, _, value = arg.partition("=")
            options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if group in groups else []
            if options and value not in (*options, "null"):
                return (f"{arg}: {group} is a config group, not a value; choose one of its options: "
                        f"{', '.join(f'{group}={o}' for o in options)}")
    if text.startswith("Only one of --run, --multirun, --cfg"):  # Hydra's modes: -m with --cfg, --info, ...
        return ("-m (--multirun) cannot be combined with --cfg, --info or --shell-completion; drop -m to see one "
                "job's config (a sweep's jobs differ only in their swept keys)")
    missing_equal = re.match(r"Error parsing override '(.*)'\nmissing EQUAL at '<EOF>'", text)
    if missing_equal:  # a word without =: help, or key value with a space
        word = missing_equal.group(1)
        if word == "help":
            return f"{word}: not an override; for the config groups and keys: {command('lstm-train')} --help"
        at = args.index(word) if word in args else len(args)
        return f"{word}: an override is key=value, without spaces; write {word}={value_after(args, at)}"
    if text.startswith("Ambiguous value for argument"):
        arg = text.split("'")[1] if "'" in text else text
        key = arg.partition("=")[0]
        return f"{arg}: a comma list is a sweep: add -m (--multirun); for a list value write {key}=[a,b]"
    return None
