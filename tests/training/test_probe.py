"""The training probe: gate histograms, saturation and the gradient highway in TensorBoard, training left as it
was, padded steps left out, and the one clear error for a cell without gates."""

from __future__ import annotations

import pytest
import torch

from lstm_train.config import ConfigError
from lstm_train.models import build_model
from lstm_train.nn import LSTM
from lstm_train.tasks import build_task
from lstm_train.train import train
from lstm_train.training.probe import GATES, record, summarize
from tests.helpers import events

pytestmark = pytest.mark.usefixtures("one_thread")


def test_probe_logs_its_tags_and_leaves_training_identical(compose_cfg, tmp_path):
    # dropout: the probe must not draw from the global generator; 8 steps, probed at 3 and 6
    base = ["debug=fast", "trainer.max_epochs=1", "model.bidirectional=true", "model.dropout=0.3"]
    plain = train(compose_cfg(*base), tmp_path / "plain")
    probed = train(compose_cfg(*base, "trainer.probe_every_n_steps=3", "trainer.probe_size=16"), tmp_path / "probe")
    for key in ("train", "val", "test", "best", "step"):
        assert probed[key] == plain[key]

    acc = events(tmp_path / "probe")
    layers = [f"encoder.lstm.{layer}" for layer in ("l0", "l0_reverse", "l1", "l1_reverse")]
    histograms = {f"gates/{p}/{g}" for p in layers for g in GATES} | {f"cell_state/{p}" for p in layers}
    assert set(acc.Tags()["histograms"]) == histograms
    sigmoid_gates = ("input", "forget", "output")
    saturation = {f"saturation/{p}/{g}_{s}" for p in layers for g in sigmoid_gates for s in ("low", "high")}
    highway = {f"grad_highway/{p}/log10_first_over_last" for p in layers}
    scalars = set(acc.Tags()["scalars"])
    assert saturation | highway <= scalars
    assert acc.Tags()["images"] == ["grad_highway/encoder.lstm"]
    assert [e.step for e in acc.Scalars("saturation/encoder.lstm.l0/forget_high")] == [3, 6]
    # real steps only: 16 sequences x 8 steps x 16 units per histogram
    assert acc.Histograms("gates/encoder.lstm.l1/forget")[0].histogram_value.num == 16 * 8 * 16
    assert all(0 <= e.value <= 1 for e in acc.Scalars("saturation/encoder.lstm.l1/input_low"))


def test_summary_counts_real_steps_only_and_reads_torch_lstms(compose_cfg):
    # text_cls-like padding through the probe's own path: a Batch with lengths, our LSTM vs torch.nn.LSTM
    cfg = compose_cfg("debug=fast", "model.backend=torch")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    x, y = task.sample(3, torch.Generator().manual_seed(0))
    ours = LSTM(10, 16, 2, batch_first=True)
    ours.load_state_dict(model.encoder.lstm.state_dict())
    from lstm_train.tasks import Batch

    batch = Batch(x, y, torch.tensor([8, 3, 5]))
    grads_before = [p.grad for p in model.parameters()]
    calls = record(task, model, batch)
    assert model.training and grads_before == [p.grad for p in model.parameters()]
    (rec,) = calls["encoder.lstm"]
    gates = ours(x, lengths=batch.lengths, return_gates=True)[2]
    for a, b in zip(gates, rec.gates, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    summary = summarize(calls)
    assert summary.histograms["gates/encoder.lstm.l0/input"].numel() == (8 + 3 + 5) * 16
    forget = gates[0][..., 1, :][torch.arange(8)[None, :] < batch.lengths[:, None]]
    assert summary.scalars["saturation/encoder.lstm.l0/forget_high"] == pytest.approx((forget > 0.9).float().mean())


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_the_probe_refuses_a_cell_without_gates(compose_cfg, tmp_path, cell):
    with pytest.raises(ConfigError, match=r"^trainer\.probe_every_n_steps: .*has none \(TorchGRU|TorchRNN"):
        train(compose_cfg("debug=fast", f"model.cell={cell}", "trainer.probe_every_n_steps=1"), tmp_path / "p")
