"""The GRU and RNN baselines (model.cell): a whole run with each, and padding handled as packed sequences are."""

from __future__ import annotations

import pytest
import torch

from lstm_train.nn import build_recurrent
from lstm_train.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_baseline_cells_train_end_to_end(compose_cfg, tmp_path, cell):
    result = train(compose_cfg("debug=fast", f"model.cell={cell}", "trainer.max_epochs=1"), tmp_path)
    assert result["step"] == 8 and 0 <= result["test"]["acc"] <= 1
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    gate_rows = {"gru": 3, "rnn": 1}[cell]
    assert state["model"]["encoder.lstm.weight_hh_l0"].shape == (gate_rows * 16, 16)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_baseline_cells_handle_padding_like_packed_sequences(cell):
    torch.manual_seed(0)
    rnn = build_recurrent(cell, "fast", 3, 4, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(2, 5, 3)
    out, (h_n, c_n) = rnn(x, lengths=[5, 2])
    alone, (h_alone, _) = rnn(x[1:, :2])  # the short sequence without its padding
    torch.testing.assert_close(out[1, :2], alone[0])
    torch.testing.assert_close(h_n[:, 1], h_alone[:, 0])
    assert torch.all(out[1, 2:] == 0) and torch.all(c_n == 0)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_baseline_cells_have_no_gates_to_return(cell):
    rnn = build_recurrent(cell, "fast", 3, 4, num_layers=2, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="has no gates"):
        rnn(torch.randn(2, 5, 3), return_gates=True)
