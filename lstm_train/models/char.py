"""Character language model: embedding -> LSTM stack -> linear layer to the vocabulary; sampling."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lstm_train.errors import ConfigError
from lstm_train.schema import value
from lstm_train.tasks import Inputs, Task

from .base import Model, ModelConfig
from .encoder import Encoder, Stack

State = tuple[Tensor, Tensor]


@dataclass
class CharConfig(ModelConfig):
    tie_weights: bool = value(doc="The output layer shares the embedding matrix (needs hidden_size == "
                              "embedding_dim).")

    def check(self) -> None:
        super().check()
        self.check_one_step_calls("a char model samples one step per call")
        if self.tie_weights and self.hidden_size != self.embedding_dim:
            raise ConfigError("model.tie_weights", "needs model.hidden_size == model.embedding_dim "
                              f"({self.hidden_size} != {self.embedding_dim})")
        if self.bidirectional:  # the reverse direction would see the very characters it must predict
            raise ConfigError("model.bidirectional", "a language model reads left to right; set it to false")


class CharLM(Model):
    """Logits for the next token at every step. With ``tie_weights`` the output layer is the embedding
    matrix (fewer parameters, often a better LM), which needs hidden_size == embedding_dim."""

    name = "char"
    kind = "language_model"
    Config = CharConfig

    def __init__(self, inputs: Inputs, stack: Stack, embedding_dim: int, tie_weights: bool = False) -> None:
        super().__init__()
        self.encoder = Encoder(inputs, stack, embedding_dim)
        self.head = nn.Linear(self.encoder.output_size, inputs.vocab_size)
        if tie_weights:
            self.head.weight = self.encoder.embedding.weight

    @classmethod
    def build(cls, cfg: CharConfig, task: Task) -> CharLM:
        return cls(task.inputs, cfg.stack(), cfg.embedding_dim, cfg.tie_weights)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, state: State | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, State]:
        """Logits (B, T, V); with ``return_state`` also the final (h, c) (truncated BPTT carries it on)."""
        logits, new_state = self.step(x, state, lengths)
        return (logits, new_state) if return_state else logits

    def step(self, x: Tensor, state: State | None = None, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """Logits (B, T, V) and the final (h, c), to continue from: the one call sampling makes per step."""
        out, new_state = self.encoder(x, lengths, state)
        return self.head(out), new_state

    @torch.no_grad()
    def stream(
        self,
        prompt: Sequence[int] | Tensor,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Yield ``length`` sampled token ids after ``prompt``: the prompt goes through the LSTM once, then
        each new token is one step from the carried (h, c). temperature 0: greedy argmax; top_k: sample
        among the k most likely tokens only. Sampling draws on the CPU from ``generator`` (seed it to
        reproduce a sample)."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be > 0 (or None for no cut), got {top_k}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("the prompt is empty; give at least one token to start from")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            logits, state = self.step(ids.to(device))
            for i in range(length):
                token = _pick(logits[0, -1].float().cpu(), temperature, top_k, generator)
                yield token
                if i + 1 < length:  # no step for a token nobody will sample after
                    logits, state = self.step(torch.tensor([[token]], device=device), state)
        finally:
            self.train(was_training)

    def generate(
        self,
        prompt: Sequence[int] | Tensor,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """The ``length`` token ids :meth:`stream` yields, as a list."""
        return list(self.stream(prompt, length, temperature, top_k, generator))


def _pick(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        cut = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < cut, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
