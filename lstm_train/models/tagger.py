"""Many-to-many: a tag for every token."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import functional as F

from lstm_train.schema import probability, value
from lstm_train.tasks import Inputs, Task

from .base import Model, ModelConfig
from .encoder import Encoder, Stack


@dataclass
class TaggerConfig(ModelConfig):
    output_dropout: float = value(probability)  # on the LSTM's outputs, before the tag layer (training only)


class Tagger(Model):
    """Embedding -> LSTM (both directions' outputs concatenated) -> dropout -> Linear, at every step.

    With ``lengths`` the LSTM runs each sentence to its own end only (the reverse direction starts at its
    last real word), so a sentence gets the same tags alone or in a padded batch; outputs at padded steps
    are meaningless and the tagging tasks ignore them.
    """

    name = "tagger"
    kind = "tagging"
    Config = TaggerConfig

    def __init__(
        self, inputs: Inputs, num_tags: int, stack: Stack, embedding_dim: int | None = None, output_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.encoder = Encoder(inputs, stack, embedding_dim)
        self.dropout = nn.Dropout(output_dropout)
        self.head = nn.Linear(self.encoder.output_size, num_tags)

    @classmethod
    def build(cls, cfg: TaggerConfig, task: Task) -> Tagger:
        return cls(task.inputs, task.num_outputs, cfg.stack(), cfg.embedding_dim, cfg.output_dropout)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T) word ids -> (B, T, tags) logits."""
        output, _ = self.encoder(x, lengths)
        if output.shape[1] < x.shape[1]:  # the LSTM stops at the longest length; the batch may pad beyond it
            output = F.pad(output, (0, 0, 0, x.shape[1] - output.shape[1]))
        return self.head(self.dropout(output))
