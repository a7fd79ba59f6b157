"""One rank's side of data-parallel training (the collectives: distributed.py): its model wrapped in DDP, its share
of each batch's loss, and the agreement with the other ranks on when to stop or save."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lstm_train.tasks import Batch, Task
from lstm_train.training import distributed
from lstm_train.training.distributed import World
from lstm_train.training.interrupt import StopRequest


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """What training calls: DDP around ``model`` (it all-reduces the gradients), or ``model`` in one process."""
    if world.size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def loss_share(task: Task, local: Batch, batch: Batch, real: bool, world: World) -> float:
    """This rank's share of the global ``batch``'s loss weight (samples, or real tokens): ``local``'s, counted on
    the CPU (0 for a rank whose share is a dummy row, not ``real``)."""
    return task.loss_weight(local) / task.loss_weight(batch) if real and world.size > 1 else 0.0


def backward(loss: Tensor, share: float, world: World) -> Tensor:
    """Backpropagate this rank's ``loss``; returns its part of the global batch's mean loss (the ranks' parts sum
    to it when logged)."""
    if world.size == 1:
        loss.backward()
        return loss.detach()
    # The loss times its share, times N: DDP averages the gradients over the N ranks, which makes them the gradient
    # of the global batch's mean loss (over samples, or over real tokens).
    (loss * (share * world.size)).backward()
    return loss.detach() * share


def agreed(stop: StopRequest, world: World, late: bool = False) -> tuple[int | None, bool, bool]:
    """The stop signal, save request and budget end (``late``) that every rank acts on now. A signal may reach
    one process first, and one stopping or saving alone would wait for the others in a collective. A request that
    comes during the agreement stays in ``stop`` for the next one (the agreed values do not replace it)."""
    if world.size == 1:
        return stop.signum, stop.save, late
    signum, save, late = distributed.agreed_request(stop.signum, stop.save, late)
    stop.signum, stop.save = stop.signum or signum, stop.save or save  # another rank's request is ours too
    return signum, save, late
