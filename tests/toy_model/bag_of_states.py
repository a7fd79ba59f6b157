"""A fifth model from outside the package: "bag of states", the mean (or the max) of the LSTM's outputs over each
sequence's real steps, then a linear layer to class logits.

It is this module and conf/model/bag.yaml beside it, with no edit anywhere else: the YAML names this class with
``_target_``, and lstm-train imports this module (which registers the model, see lstm_train/registry.py) when it
checks the config. tests/models/test_toy_model.py trains it end to end:

    PYTHONPATH=tests/toy_model lstm-train model=bag hydra.searchpath=[file://tests/toy_model/conf]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lstm_train.models import Encoder, Model, ModelConfig, Stack
from lstm_train.schema import one_of, value
from lstm_train.tasks import Inputs, Task


@dataclass
class BagConfig(ModelConfig):
    pool: str = value(one_of("mean", "max"), doc="How the LSTM's outputs over each sequence's real steps are pooled.")


class BagOfStates(Model):
    name = "bag"
    kind = "classification"
    Config = BagConfig

    def __init__(
        self, inputs: Inputs, num_classes: int, stack: Stack, embedding_dim: int | None = None, pool: str = "mean"
    ) -> None:
        super().__init__()
        self.encoder = Encoder(inputs, stack, embedding_dim)
        self.head = nn.Linear(self.encoder.output_size, num_classes)
        self.pool = pool

    @classmethod
    def build(cls, cfg: BagConfig, task: Task) -> BagOfStates:
        return cls(task.inputs, task.num_outputs, cfg.stack(), cfg.embedding_dim, cfg.pool)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        out, _ = self.encoder(x, lengths)  # (B, T, D), T: the longest length; padded steps are not real
        lengths = torch.full((len(out),), out.shape[1]) if lengths is None else torch.as_tensor(lengths)
        real = (torch.arange(out.shape[1]) < lengths[:, None]).to(out.device)[..., None]
        if self.pool == "max":
            return self.head(out.masked_fill(~real, float("-inf")).amax(1))
        return self.head((out * real).sum(1) / lengths.to(out)[:, None])
