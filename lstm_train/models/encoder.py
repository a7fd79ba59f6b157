"""The part every model shares: the input layer the task needs, then the configured LSTM stack.

``model.cell`` swaps the LSTM for torch's GRU or vanilla RNN (baselines with the LSTM's interface); the
attribute stays ``lstm`` whatever the cell, so the models and checkpoints read the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig
from torch import Tensor, nn

from lstm_train.nn import Chrono, build_recurrent
from lstm_train.tasks import Inputs


def forget_bias(cfg: DictConfig) -> float | Chrono:
    """The LSTM's ``forget_bias`` from model.forget_bias: a number, or chrono up to model.chrono_max_len."""
    if cfg.forget_bias == "chrono":
        return Chrono(cfg.chrono_max_len)
    return float(cfg.forget_bias)


class Encoder(nn.Module):
    """Float vectors go into the LSTM as they are (as in the seed); token ids through an embedding first.

    Batches are batch-first, (B, T, ...), as tasks produce them.
    """

    def __init__(self, cfg: DictConfig, inputs: Inputs) -> None:
        super().__init__()
        if inputs.vocab_size is not None:
            self.embedding = nn.Embedding(inputs.vocab_size, cfg.embedding_dim)
            input_size = cfg.embedding_dim
        else:
            self.embedding = None
            input_size = inputs.features
        self.lstm = build_recurrent(
            cfg.get("cell", "lstm"),  # .get: checkpoints written before model.cell existed hold LSTMs
            cfg.backend,
            input_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,  # between layers only: none to apply
            bidirectional=cfg.bidirectional,
            forget_bias=forget_bias(cfg),
        )
        self.output_size = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.state_size = self.output_size * cfg.num_layers  # all layers' final h, concatenated

    def forward(self, x: Tensor, lengths: Tensor | Sequence[int] | None = None, **kwargs):
        """The LSTM's ``(output, (h_n, c_n))`` (plus gates with ``return_gates=True``)."""
        if self.embedding is not None:
            x = self.embedding(x)
        return self.lstm(x, lengths=lengths, **kwargs)
