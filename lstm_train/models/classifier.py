"""Many-to-one: the seed's classifier."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import Tensor, nn

from lstm_train.tasks import Task

from .encoder import Encoder


class Classifier(nn.Module):
    """The final hidden state of every layer (and direction) concatenated, then one linear layer to logits.

    Reading all layers, not only the top one, gives the head the lower layers' memory directly.
    """

    def __init__(self, cfg: DictConfig, task: Task) -> None:
        super().__init__()
        self.encoder = Encoder(cfg, task.inputs)
        self.head = nn.Linear(self.encoder.state_size, task.num_outputs)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        _, (h_n, _) = self.encoder(x, lengths)  # h_n: (layers * directions, B, H), each at its true end
        return self.head(h_n.transpose(0, 1).reshape(h_n.shape[1], -1))
