"""Many-to-one: the seed's classifier."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lstm_train.tasks import Inputs, Task

from .base import Model, ModelConfig
from .encoder import Encoder, Stack


@dataclass
class ClassifierConfig(ModelConfig):
    pass


class Classifier(Model):
    """The final hidden state of every layer (and direction) concatenated, then one linear layer to logits.

    Reading all layers, not only the top one, gives the head the lower layers' memory directly.
    """

    name = "classifier"
    kind = "classification"
    Config = ClassifierConfig

    def __init__(self, inputs: Inputs, num_classes: int, stack: Stack, embedding_dim: int | None = None) -> None:
        super().__init__()
        self.encoder = Encoder(inputs, stack, embedding_dim)
        self.head = nn.Linear(self.encoder.state_size, num_classes)

    @classmethod
    def build(cls, cfg: ClassifierConfig, task: Task) -> Classifier:
        return cls(task.inputs, task.num_outputs, cfg.stack(), cfg.embedding_dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        _, (h_n, _) = self.encoder(x, lengths)  # h_n: (layers * directions, B, H), each at its true end
        return self.head(h_n.transpose(0, 1).reshape(h_n.shape[1], -1))
