"""What stops or pauses the loop from outside: SIGINT or SIGTERM (save last.pt at the step, then stop), a
scheduler's request to save (submitit: SLURM's warning before a requeue); see interrupt.py. Data-parallel ranks act
on them together, as they agree (data_parallel.agreed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lstm_train.training.distributed import World
from lstm_train.training.interrupt import Interrupted, StopRequest, signal_name

log = logging.getLogger(__name__)


def save_on_request(stop: StopRequest, save: Callable[[], Path], step: int) -> None:
    """A scheduler's warning: last.pt now (``save``), then what it asks."""
    path = save()
    log.info("saved %s at step %d", path, step)
    stop.save, then, stop.then = False, stop.then, None
    if then is not None:
        then()  # submitit requeues the job and exits; the requeued job resumes with trainer.resume=auto


def stopped(signum: int, path: Path, step: int, total: int) -> Interrupted:
    """The stop at ``step`` after a signal, last.pt saved at ``path``."""
    return Interrupted(signum, f"interrupted ({signal_name(signum)}) at step {step}/{total}: saved {path}",
                       checkpoint=path)


def stopped_in_test(signum: int, step: int, total: int, last: Path | None) -> Interrupted:
    """The stop after a signal in the test, which has no step to finish: the training is saved in ``last``."""
    return Interrupted(signum, f"interrupted ({signal_name(signum)}) in the test, after training to step {step}/"
                       f"{total} (saved in {last}): no test, no metrics.json", checkpoint=last)


def at_once_from_now(stop: StopRequest, world: World, interrupted: Callable[[int], Interrupted]) -> None:
    """Training is over and saved: from now on a signal stops at once, raising ``interrupted(signum)``, and so does
    one that came after the loop's last check (alone: data-parallel ranks only act on what they agreed on)."""
    stop.at_once = interrupted
    if stop.signum is not None and world.size == 1:
        raise interrupted(stop.signum)
