"""Ctrl-C and SIGTERM (what ``kill``, SLURM and most schedulers send): stop cleanly, never with a traceback.

During training the first signal only raises a flag: the loop finishes the step it is in, saves last.pt at
that step and raises :class:`Interrupted`, which the CLI turns into one line and exit status 128 + signal
(130 for SIGINT, 143 for SIGTERM). A second signal (a second or more after the first), one during the test
(:attr:`StopRequest.at_once`: training is over and saved, there is no step to finish), or one outside the training
loop, raises :class:`Interrupted` at once. It derives from BaseException, as KeyboardInterrupt does, so that no
``except Exception`` on the way (Hydra's job runner included) swallows it. Once the console script has reported
the stop, :func:`exit_after_stop` ends the process: a signal then exits at once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A Ctrl-C reaches the workers of a data-parallel run twice: from the terminal (the whole process group) and
# from the launcher, which passes it on. A signal this soon after the first is the same request.
ECHO_SECONDS = 1.0


class Interrupted(BaseException):
    """A run stopped by a signal. ``str(error)`` is the line for the user; ``exit_code`` is 128 + signal;
    ``checkpoint`` is the last.pt saved at the step reached, if the run stopped cleanly."""

    def __init__(self, signum: int, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interruption(error: BaseException) -> Interrupted | None:
    """The :class:`Interrupted` that caused ``error``, if code it was raised in wrapped it in an error of its own
    (pybind11 does in a C extension's import, matplotlib's among them: ImportError "initialization failed")."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Interrupted):
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)  # from None: not it
    return None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only it may set signal handlers


def _raise_at_once(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum, f"interrupted ({signal_name(signum)})")


def raise_on_signals() -> None:
    """Make SIGTERM, like SIGINT, interrupt with :class:`Interrupted` (the CLI's handlers outside training)."""
    if _in_main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _raise_at_once)


def exit_after_stop(status: int) -> None:
    """The process, stopped by a signal, is exiting with ``status`` (the console script calls this as it reports
    the stop): a signal from now on exits at once, with 128 + signal and no traceback, and the process ends once
    Python's exit handlers (atexit) have run.

    That skips the interpreter's teardown, which frees PyTorch's modules for about a second after giving SIGINT
    back its default action: a second Ctrl-C there killed the process (status -2 to its parent, not 130). Nothing
    is left to save by then: checkpoints are written by atomic renames, the logs closed by their exit handler.
    """
    global _exit_status
    if not _in_main_thread():
        return
    first, _exit_status = _exit_status is None, status  # called again: the last status is the one
    for signum in SIGNALS:
        signal.signal(signum, lambda signum, frame: _end(128 + signum))
    if first:
        atexit.register(_after_the_exit_handlers)


_exit_status: int | None = None


def _after_the_exit_handlers() -> None:
    atexit.unregister(_after_the_exit_handlers)
    # The handlers registered before this one are due after it: run them now (CPython 3.10-3.13's atexit; there is
    # no public way). One registered after it (none is: this comes as the process exits) would run a second time.
    atexit._run_exitfuncs()
    _end(_exit_status if _exit_status is not None else 1)


def _end(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or in the middle of a write this signal interrupted
            stream.flush()
    os._exit(status)


@dataclass
class StopRequest:
    """Set by signals inside :func:`deferred_signals`; the training loop acts on it between steps."""

    signum: int | None = None  # stop after this step
    at: float = 0.0  # when (time.monotonic) the first stop signal came
    save: bool = False  # save last.pt after this step, and go on
    then: Callable[[], None] | None = None  # to call after that save (submitit's checkpoint-and-requeue)
    # Set when there is no step to finish (the test): a stop signal raises what it returns, at once.
    at_once: Callable[[int], Interrupted] | None = None


def submitit_signal() -> int | None:
    """The signal submitit requeues this job on (USR2 unless SUBMITIT_PREEMPT_SIGNAL says), or None when this
    process is not a submitit job."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").removeprefix("SIG"), None)


@contextmanager
def deferred_signals() -> Iterator[StopRequest]:
    """In the block, the first SIGINT or SIGTERM sets the request's ``signum``; a second raises at once.

    In a submitit job (SLURM, or submitit's local executor) a preempted job is requeued, not stopped: SLURM's
    SIGTERM only asks for last.pt to be saved at the step reached (training goes on until the end comes), and
    submitit's requeue signal (USR2) saves last.pt, then lets submitit requeue the job; the requeued job
    continues from that last.pt with ``trainer.resume=auto``.
    """
    request = StopRequest()
    if not _in_main_thread():
        yield request
        return
    requeue = submitit_signal()

    def handle(signum: int, frame: FrameType | None) -> None:
        if requeue is not None and signum == signal.SIGTERM:
            request.save = True
            log.warning("SIGTERM received in a submitit job: saving last.pt after this step, then going on")
            return
        if request.signum is not None:
            if time.monotonic() - request.at < ECHO_SECONDS:
                return  # the same stop, delivered twice (terminal and launcher): not a second request
            raise Interrupted(signum, f"interrupted again ({signal_name(signum)}): stopped at once, mid-step")
        request.signum, request.at = signum, time.monotonic()
        if request.at_once is not None:
            raise request.at_once(signum)
        log.warning("%s received: stopping after this step (send it again to stop at once)", signal_name(signum))

    handlers: dict[int, Callable] = dict.fromkeys(SIGNALS, handle)
    if requeue is not None:
        submitit_handler = signal.getsignal(requeue)

        def handle_requeue(signum: int, frame: FrameType | None) -> None:
            request.save = True
            if callable(submitit_handler):
                request.then = lambda: submitit_handler(signum, None)
            log.warning("%s received from submitit: saving last.pt after this step, then requeueing",
                        signal_name(signum))

        handlers[requeue] = handle_requeue
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
