"""Character language model: embedding -> LSTM stack -> linear layer to the vocabulary; sampling."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lstm_train.config import ConfigError
from lstm_train.tasks import Task

from .encoder import Encoder

State = tuple[Tensor, Tensor]


class CharLM(nn.Module):
    """Logits for the next token at every step. With ``tie_weights`` the output layer is the embedding
    matrix (fewer parameters, often a better LM), which needs hidden_size == embedding_dim."""

    def __init__(self, cfg: DictConfig, task: Task) -> None:
        super().__init__()
        if cfg.bidirectional:  # the reverse direction would see the very characters it must predict
            raise ConfigError("model.bidirectional", "a language model reads left to right; set it to false")
        if cfg.tie_weights and cfg.hidden_size != cfg.embedding_dim:
            raise ConfigError("model.tie_weights", "needs model.hidden_size == model.embedding_dim "
                              f"({cfg.hidden_size} != {cfg.embedding_dim})")
        self.encoder = Encoder(cfg, task.inputs)
        self.head = nn.Linear(self.encoder.output_size, task.num_outputs)
        if cfg.tie_weights:
            self.head.weight = self.encoder.embedding.weight

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, state: State | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, State]:
        """Logits (B, T, V); with ``return_state`` also the final (h, c) (truncated BPTT carries it on)."""
        logits, new_state = self.step(x, state, lengths)
        return (logits, new_state) if return_state else logits

    def step(self, x: Tensor, state: State | None = None, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """Logits (B, T, V) and the final (h, c), to continue from: the one call sampling makes per step."""
        emb = self.encoder.embedding(x)
        out, new_state = self.encoder.lstm(emb, state, lengths=lengths)
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
