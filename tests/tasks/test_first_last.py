"""first_last data: the seed's labelling rule, fixed evaluation sets, replayable training epochs."""

from __future__ import annotations

import pytest
import torch

from lstm_train.tasks import build_task


def test_labels_follow_the_first_and_last_steps(compose_cfg):
    task = build_task(compose_cfg().task)
    x, y = task.splits["test"]
    assert x.shape == (10_000, 30, 10)
    assert torch.equal(y, (x[:, 0, 0] + x[:, -1, 0] > 0).long())  # the seed's rule
    assert 0.48 < y.float().mean() < 0.52


def test_more_classes_are_equally_likely_buckets(compose_cfg):
    task = build_task(compose_cfg("task.num_classes=4").task)
    _, y = task.splits["test"]
    counts = torch.bincount(y, minlength=4).float() / len(y)
    assert torch.all((counts - 0.25).abs() < 0.02)


def test_eval_sets_depend_on_the_data_seed_only(compose_cfg):
    a = build_task(compose_cfg().task)
    b = build_task(compose_cfg().task)
    c = build_task(compose_cfg("task.data_seed=7").task)
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])
    assert not torch.equal(a.splits["val"][0][:100], a.splits["test"][0][:100])


@pytest.mark.parametrize("fresh", ["true", "false"], ids=["fresh", "fixed"])
def test_train_epochs_replay_from_seed_and_epoch(compose_cfg, fresh):
    task = build_task(compose_cfg("task.train_size=100", f"task.fresh={fresh}").task)
    first = list(task.train_batches(epoch=3, batch_size=32, seed=0))
    again = list(task.train_batches(epoch=3, batch_size=32, seed=0))
    other = list(task.train_batches(epoch=4, batch_size=32, seed=0))
    assert [len(b) for b in first] == [32, 32, 32, 4] and task.steps_per_epoch(32) == 4
    assert all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(first, again, strict=True))
    assert not torch.equal(first[0].x, other[0].x)
    if fresh == "false":  # a fixed set, reshuffled: the same sequences in another order
        seen = torch.cat([b.x for b in first]).sum(dim=(1, 2)).sort().values
        assert torch.allclose(seen, task.fixed_train[0].sum(dim=(1, 2)).sort().values)
