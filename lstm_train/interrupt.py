"""Ctrl-C and SIGTERM (what ``kill``, SLURM and most schedulers send): stop cleanly, never with a traceback.

During training the first signal only raises a flag: the loop finishes the step it is in, saves last.pt at
that step and raises :class:`Interrupted`, which the CLI turns into one line and exit status 128 + signal
(130 for SIGINT, 143 for SIGTERM). A second signal (a second or more after the first), or one outside the
training loop, raises :class:`Interrupted` at once. It derives from BaseException, as KeyboardInterrupt does, so that no
``except Exception`` on the way (Hydra's job runner included) swallows it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
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


@dataclass
class StopRequest:
    """Set by the first signal inside :func:`deferred_signals`; the training loop polls it between steps."""

    signum: int | None = None
    at: float = 0.0  # when (time.monotonic) the first signal came


@contextmanager
def deferred_signals() -> Iterator[StopRequest]:
    """In the block, the first SIGINT or SIGTERM sets the request's ``signum``; a second raises at once."""
    request = StopRequest()
    if not _in_main_thread():
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:
            if time.monotonic() - request.at < ECHO_SECONDS:
                return  # the same stop, delivered twice (terminal and launcher): not a second request
            raise Interrupted(signum, f"interrupted again ({signal_name(signum)}): stopped at once, mid-step")
        request.signum, request.at = signum, time.monotonic()
        log.warning("%s received: stopping after this step (send it again to stop at once)", signal_name(signum))

    previous = {signum: signal.signal(signum, handle) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
