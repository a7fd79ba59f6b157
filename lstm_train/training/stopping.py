"""What stops or pauses the loop from outside: SIGINT or SIGTERM (save last.pt at the step, then stop), a
scheduler's request to save (submitit: SLURM's warning before a requeue). Data-parallel ranks act on them
together (see lstm_train/training/interrupt.py and distributed.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lstm_train.training import distributed
from lstm_train.training.distributed import World
from lstm_train.training.interrupt import Interrupted, StopRequest, signal_name

log = logging.getLogger(__name__)


def agreed(stop: StopRequest, world: World, late: bool = False) -> tuple[int | None, bool, bool]:
    """The stop signal, save request and budget end (``late``) that every rank acts on now. A signal may reach
    one process first, and one stopping or saving alone would wait for the others in a collective. A request that
    comes during the agreement stays in ``stop`` for the next one (the agreed values do not replace it)."""
    if world.size == 1:
        return stop.signum, stop.save, late
    signum, save, late = distributed.agreed_request(stop.signum, stop.save, late)
    stop.signum, stop.save = stop.signum or signum, stop.save or save  # another rank's request is ours too
    return signum, save, late


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
