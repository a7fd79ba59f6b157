"""Many-to-many: a tag for every token, optionally reading each word's characters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lstm_train.errors import ConfigError
from lstm_train.schema import non_negative, positive, probability, value
from lstm_train.tasks import Inputs, Task

from .base import Model, ModelConfig
from .encoder import Encoder, Stack


@dataclass
class TaggerConfig(ModelConfig):
    output_dropout: float = value(probability, doc="Dropout on the LSTM's outputs before the tag layer, in "
                                  "training.")
    char_dim: int = value(non_negative, doc="Character embedding size: each word also read from its spelling; "
                          "0: words only (unknown words all read as <unk>).")
    char_hidden: int = value(positive, doc="The character LSTM's hidden size per direction (with char_dim > 0).")


class CharWords(nn.Module):
    """Each word's spelling as a vector (Lample et al. 2016, Plank et al. 2016): its characters' embeddings
    through a bidirectional LSTM (model.backend: ours by default), the forward direction's state after the
    last character and the reverse direction's after the first, concatenated.

    A batch's distinct words run once: the (B, T, L) character ids are reduced to their unique rows, run as one
    batch of variable lengths, and each token takes its word's vector back.
    """

    def __init__(self, num_chars: int, char_dim: int, hidden_size: int, backend: str = "fast") -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=0)
        self.lstm = Stack(hidden_size, bidirectional=True, backend=backend).build(char_dim)
        self.output_size = 2 * hidden_size

    def forward(self, chars: Tensor) -> Tensor:
        """(B, T, L) character ids right-padded with 0 -> (B, T, 2 * hidden_size)."""
        words, index = unique_words(chars)
        lengths = (words != 0).sum(1).clamp(min=1)  # the all-padding row (padded steps): its vector is not used
        _, (h_n, _) = self.lstm(self.embedding(words), lengths=lengths)
        return torch.cat([h_n[0], h_n[1]], -1)[index]


def unique_words(chars: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of (B, T, L) character ids, (U, L'), trimmed to their longest word (sorted: the
    all-padding row of padded steps first); and for each token the index of its row, (B, T)."""
    B, T, L = chars.shape
    words, index = torch.unique(chars.reshape(B * T, L), dim=0, return_inverse=True)
    longest = int((words != 0).sum(1).max()) if len(words) else 0
    return words[:, : max(longest, 1)], index.view(B, T)


class Tagger(Model):
    """Embedding -> LSTM (both directions' outputs concatenated) -> dropout -> Linear, at every step. With
    ``char_dim`` > 0 each word's embedding is concatenated with its spelling (:class:`CharWords`) before the LSTM,
    so an unknown word is read from its characters.

    With ``lengths`` the LSTM runs each sentence to its own end only (the reverse direction starts at its
    last real word), so a sentence gets the same tags alone or in a padded batch; outputs at padded steps
    are meaningless and the tagging tasks ignore them.
    """

    name = "tagger"
    kind = "tagging"
    Config = TaggerConfig

    def __init__(
        self, inputs: Inputs, num_tags: int, stack: Stack, embedding_dim: int | None = None,
        output_dropout: float = 0.0, char_dim: int = 0, char_hidden: int = 50,
    ) -> None:
        super().__init__()
        self.chars = None
        if char_dim:
            self.chars = CharWords(inputs.chars, char_dim, char_hidden, stack.backend)
        self.encoder = Encoder(inputs, stack, embedding_dim, extra=self.chars.output_size if self.chars else 0)
        self.dropout = nn.Dropout(output_dropout)
        self.head = nn.Linear(self.encoder.output_size, num_tags)

    @classmethod
    def build(cls, cfg: TaggerConfig, task: Task) -> Tagger:
        if cfg.char_dim and task.inputs.chars is None:
            raise ConfigError("model.char_dim", f"task {task.name} gives no characters: set model.char_dim=0")
        return cls(task.inputs, task.num_outputs, cfg.stack(), cfg.embedding_dim, cfg.output_dropout, cfg.char_dim,
                   cfg.char_hidden)

    def forward(self, x: Tensor, lengths: Tensor | None = None, chars: Tensor | None = None) -> Tensor:
        """(B, T) word ids (and (B, T, L) their characters, for a character-aware tagger) -> (B, T, tags) logits."""
        spelling = None
        if self.chars is not None:
            if chars is None:
                raise ValueError("a character-aware tagger needs each token's characters: pass chars")
            spelling = self.chars(chars)
        output, _ = self.encoder(x, lengths, extra=spelling)
        if output.shape[1] < x.shape[1]:  # the LSTM stops at the longest length; the batch may pad beyond it
            output = F.pad(output, (0, 0, 0, x.shape[1] - output.shape[1]))
        return self.head(self.dropout(output))
