"""Many-to-many: a tag for every token."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn import functional as F

from lstm_train.tasks import Task

from .encoder import Encoder


class Tagger(nn.Module):
    """Embedding -> LSTM (both directions' outputs concatenated) -> dropout -> Linear, at every step.

    With ``lengths`` the LSTM runs each sentence to its own end only (the reverse direction starts at its
    last real word), so a sentence gets the same tags alone or in a padded batch; outputs at padded steps
    are meaningless and the tagging tasks ignore them.
    """

    def __init__(self, cfg: DictConfig, task: Task) -> None:
        super().__init__()
        self.encoder = Encoder(cfg, task.inputs)
        self.dropout = nn.Dropout(cfg.output_dropout)
        self.head = nn.Linear(self.encoder.output_size, task.num_outputs)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T) word ids -> (B, T, tags) logits."""
        output, _ = self.encoder(x, lengths)
        if output.shape[1] < x.shape[1]:  # the LSTM stops at the longest length; the batch may pad beyond it
            output = F.pad(output, (0, 0, 0, x.shape[1] - output.shape[1]))
        return self.head(self.dropout(output))
