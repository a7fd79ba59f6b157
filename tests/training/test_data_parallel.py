"""One rank's share of a batch's loss and gradient (the processes themselves: test_distributed.py)."""

from __future__ import annotations

import torch

from lstm_train.tasks import build_task
from lstm_train.training import data_parallel, distributed
from lstm_train.training.distributed import World


def test_a_ranks_loss_counts_by_its_share_of_the_batch(compose_cfg):
    task = build_task(compose_cfg("debug=fast").task)
    batch = next(iter(task.train_batches(0, 4, 0)))
    world = World(rank=1, size=3)
    local, real = distributed.shard(batch, world)
    assert data_parallel.loss_share(task, local, batch, real, world) == len(local) / len(batch)
    assert data_parallel.loss_share(task, local, batch, real, World()) == 0.0  # one process: no share to take


def test_the_gradient_is_the_global_batchs_mean_once_ddp_averages_it():
    weight = torch.tensor(2.0, requires_grad=True)
    part = data_parallel.backward(weight * 3.0, share=0.25, world=World(rank=0, size=2))
    assert part.item() == 6.0 * 0.25 and not part.requires_grad
    assert weight.grad.item() == 3.0 * 0.25 * 2  # DDP divides by the 2 ranks
    weight.grad = None
    assert data_parallel.backward(weight * 3.0, share=0.0, world=World()).item() == 6.0
    assert weight.grad.item() == 3.0
