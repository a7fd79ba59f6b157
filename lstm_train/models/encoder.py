"""The part every model shares: the input layer the task needs, then the recurrent stack.

``Stack.cell`` swaps the LSTM for torch's GRU or vanilla RNN (baselines with the LSTM's interface); the
attribute stays ``lstm`` whatever the cell, so the models and checkpoints read the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lstm_train.nn import PLAIN_CELL, Chrono, build_recurrent
from lstm_train.tasks import Inputs


@dataclass(frozen=True)
class Stack:
    """The recurrent stack of a model: what :func:`lstm_train.nn.build_recurrent` needs besides the input size.
    Batches are batch-first, (B, T, ...), as tasks produce them."""

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # between layers, as torch.nn.LSTM
    cell: str = "lstm"  # lstm | gru | rnn
    backend: str = "fast"  # fast | reference | torch: the LSTM's implementation
    forget_bias: float | Chrono = 1.0  # the forget gate's bias at init, or chrono initialisation
    # The LSTM's cell and recurrent regularisers (lstm_train/nn/variants.py); passed on only when not plain
    variant: str = "lstm"
    layer_norm: bool = False
    zoneout_c: float = 0.0
    zoneout_h: float = 0.0
    recurrent_dropout: float = 0.0
    weight_drop: float = 0.0

    @property
    def output_size(self) -> int:
        """Features of each step's output: both directions' hidden states, concatenated."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    def build(self, input_size: int) -> nn.Module:
        return build_recurrent(
            self.cell,
            self.backend,
            input_size,
            self.hidden_size,
            num_layers=self.num_layers,
            batch_first=True,
            dropout=self.dropout if self.num_layers > 1 else 0.0,  # between layers only: none to apply
            bidirectional=self.bidirectional,
            forget_bias=self.forget_bias,
            **self.cell_options(),
        )

    def cell_options(self) -> dict[str, object]:
        """The LSTM-cell arguments that differ from the plain cell (a torch, GRU or RNN stack takes none)."""
        return {k: getattr(self, k) for k, plain in PLAIN_CELL.items() if getattr(self, k) != plain}


class Encoder(nn.Module):
    """Float vectors go into the LSTM as they are (as in the seed); token ids through an embedding first.
    ``extra``: features the caller adds to each step's input (concatenated after it), e.g. a word's spelling."""

    def __init__(self, inputs: Inputs, stack: Stack, embedding_dim: int | None = None, extra: int = 0) -> None:
        super().__init__()
        if inputs.vocab_size is not None:
            if embedding_dim is None:
                raise ValueError("token inputs need an embedding_dim")
            self.embedding = nn.Embedding(inputs.vocab_size, embedding_dim)
            input_size = embedding_dim
        else:
            self.embedding = None
            input_size = inputs.features
        self.lstm = stack.build(input_size + extra)
        self.output_size = stack.output_size
        self.state_size = self.output_size * stack.num_layers  # all layers' final h, concatenated

    def forward(
        self, x: Tensor, lengths: Tensor | Sequence[int] | None = None, state: tuple[Tensor, Tensor] | None = None,
        extra: Tensor | None = None, **kwargs,
    ):
        """The LSTM's ``(output, (h_n, c_n))`` from ``state`` (None: zeros); plus gates with ``return_gates=True``.
        ``extra``: (B, T, extra) features for each step, with an ``extra`` Encoder."""
        if self.embedding is not None:
            x = self.embedding(x)
        if extra is not None:
            x = torch.cat([x, extra], -1)
        return self.lstm(x, state, lengths=lengths, **kwargs)
