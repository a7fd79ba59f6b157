"""What every task shares (tasks/base.py): its cross-entropy, label-smoothed over real targets only."""

from __future__ import annotations

import pytest
import torch

from lstm_train.models import build_model
from lstm_train.tasks import build_task, metric_text


@pytest.mark.parametrize(
    "overrides, ignore",
    [
        (["model=classifier", "task=first_last"], None),
        (["model=char", "task=text_char", "task.val_size=8", "task.eval_streams=null"], None),
        (["model=tagger", "task=tag_synthetic", "task.min_len=1"], -100),  # padded steps
        (["model=seq2seq", "task=reverse"], 0),  # PAD after each target's EOS
    ],
    ids=["first_last", "text_char", "tag_synthetic", "reverse"],
)
def test_every_task_smooths_its_cross_entropy_over_real_targets(compose_cfg, overrides, ignore):
    cfg = compose_cfg(*overrides, "debug=fast")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task).train()
    batch = next(iter(task.eval_batches("val", 128)))  # sequences of different lengths, padded
    logits = task.forward(model, batch)  # training mode: seq2seq gives the teacher-forced logits alone
    logp = torch.log_softmax(logits, -1).reshape(-1, logits.shape[-1])
    y = batch.y.reshape(-1)
    real = y != ignore if ignore is not None else torch.ones_like(y, dtype=torch.bool)
    assert ignore is None or not real.all()
    nll = -logp[real].gather(1, y[real, None]).mean()
    uniform = -logp[real].mean()  # cross-entropy against the uniform distribution over the classes
    e = 0.3
    torch.testing.assert_close(task.loss(logits, batch), nll)
    torch.testing.assert_close(task.loss(logits, batch, e), (1 - e) * nll + e * uniform)


@pytest.mark.parametrize(("value", "spec", "text"), [
    (0.99531, ".4f", "0.9953"), (2.0 ** 310, ".4f", "2.086e+93"), (float("inf"), ".4f", "inf"),
    (float("nan"), ".4f", "nan"), (1.59e-5, ".3g", "1.59e-05"), (3e7, ".1f", "3e+07"),
])
def test_a_metric_is_written_short_even_when_a_run_diverged(value, spec, text):
    assert metric_text(value, spec) == text
