"""The mistakes a user can fix, and how a command-line tool reports them: one line, no traceback, exit status 2;
the commands those lines tell the user to run."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work. ``str(error)`` is one line that starts with the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __reduce__(self) -> tuple:  # pickled back from a sweep's job process (joblib, submitit)
        return type(self), (self.key, self.message)


class RunError(RuntimeError):
    """A run that failed after saving what it could (lstm-train reports it on one line, exit status 1).
    ``str(error)`` is that line."""


class Pruned(Exception):
    """An Optuna study's pruner stopped the trial after the evaluation at ``step`` (last.pt holds it;
    lstm_train/training/pruning.py). Not a failure: the sweeper records the trial as pruned, the sweep summary
    the job."""

    def __init__(self, step: int, monitor: str, value: float, best: dict[str, Any] | None = None) -> None:
        super().__init__(step, monitor, value, best)  # args as given: pickled back from a job's process
        self.step, self.monitor, self.value, self.best = step, monitor, value, best

    def __str__(self) -> str:
        return f"pruned by the study's pruner at step {self.step} ({self.monitor} {self.value:.4g})"


class UsageError(Exception):
    """A command-line mistake of lstm-generate, lstm-predict, lstm-visualize or a script: a wrong argument, a
    checkpoint the tool cannot use. ``str(error)`` is the one line to show."""


# The errors lstm-train reports by their message alone, on one line (lstm_train/cli/report.py; a sweep's summary and
# its Optuna warnings the same): a config mistake, a run that diverged, one that failed after saving what it could.
# Any other is unexpected, and its type is part of the news.
REPORTED = (ConfigError, FloatingPointError, RunError)


# 128 + SIGPIPE: the status the shell shows for a program a closed pipe stopped (git log | head)
BROKEN_PIPE_STATUS = 141


@contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """End the program quietly, with status 141, when whoever reads its stdout stops reading (``lstm-train --help
    | head -1``), as git log does: no traceback, no error line. What is still buffered is flushed here (also
    before an exit, argparse's or Hydra's after --help), so that Python's own flush at exit meets nothing."""
    try:
        try:
            yield
        except SystemExit:
            sys.stdout.flush()
            raise
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout once more at exit, and would report that flush failing too: stdout to devnull
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(BROKEN_PIPE_STATUS)


@contextmanager
def one_line_errors(prog: str, *also: type[BaseException]) -> Iterator[None]:
    """Report a :class:`UsageError`, a :class:`ConfigError` or any of ``also`` as ``prog: error: ...`` (its first
    line) on stderr and exit with status 2; Ctrl-C exits with 130; a reader of stdout that is gone ends the program
    quietly (:func:`quiet_broken_pipe`)."""
    try:
        with quiet_broken_pipe():
            yield
    except (UsageError, ConfigError, *also) as e:
        print(f"{prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def command(name: str) -> str:
    """How to run the console script ``name`` installed beside this Python: by name if that is what the shell
    finds on PATH, else by its full path (a venv that is not activated)."""
    script = Path(sys.executable).with_name(name)
    found = shutil.which(name)
    if not script.is_file() or (found is not None and os.path.samefile(found, script)):
        return name
    return shlex.quote(str(script))
