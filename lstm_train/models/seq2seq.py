"""Encoder-decoder: the seed's Seq2SeqLSTM, with teacher forcing, greedy and beam decoding, optional attention.

- Encoder: :class:`Encoder` (source embedding -> LSTM stack) over the padded source with its lengths.
- Bridge: the encoder's final (h, c) of every layer start the decoder's layers (the seed's fixed context).
  A bidirectional encoder's two directions are joined per layer: h = tanh(W_l [h_fwd; h_bwd] + b_l) and
  c = U_l [c_fwd; c_bwd] + d_l (no tanh: a cell state is not bounded). The decoder keeps ``hidden_size``, so
  its cost per step (what decoding pays, one step at a time) does not double as it would with a 2H decoder.
- Decoder: target embedding -> LSTM stack (the same backend) -> [attention] -> linear to the target vocabulary.
- Attention (``attention: true``): Luong's "general" score s_t^T W_a m_j over the encoder outputs m_j, source
  padding masked, then tanh(W_c [context; s_t]) goes to the output layer. It reads the decoder's LSTM
  outputs and does not feed back into the LSTM's input, so a teacher-forced target still goes through the
  decoder LSTM in one call.

Output dropout (``output_dropout``): on the encoder's outputs and the decoder's LSTM outputs, in training only;
``dropout`` (between layers) leaves a 1-layer model without any.

Teacher forcing: with probability ``teacher_forcing_ratio``, a whole training batch is teacher-forced (one
LSTM call over the target); otherwise that batch is decoded step by step from the model's own argmax.
One coin per batch, not per step: a per-step coin would force every batch onto the slow step-by-step path.

Decoding (:meth:`Seq2Seq.decode`): greedy (``beam_size`` 1) or beam search; each step is one LSTM call for
the whole batch (times the beam), carrying (h, c). A sequence stops at EOS or after
floor(``max_length_ratio`` * source length + ``max_length_offset``) tokens (EOS included), whichever comes
first. Scores are the summed log-probabilities of the output tokens (EOS included). Beam search ranks
hypotheses by that sum while searching; the final pick among the beam divides it by length **
``length_penalty`` (0: no normalisation), so beam size 1 is greedy decoding exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_train.errors import ConfigError
from lstm_train.schema import non_negative, positive, probability, unit_interval, value
from lstm_train.tasks import Inputs, Task
from lstm_train.tasks.seq2seq import BOS, EOS, PAD

from .base import Model, ModelConfig
from .encoder import Encoder, Stack

State = tuple[Tensor, Tensor]


@dataclass
class Seq2SeqConfig(ModelConfig):
    attention: bool = value(doc="Luong attention over the encoder's outputs; false: the encoder's final (h, c) "
                            "only.")
    output_dropout: float = value(probability, doc="Dropout on the encoder's and decoder's LSTM outputs, in "
                                  "training (dropout: between layers only).")
    teacher_forcing_ratio: float = value(unit_interval, doc="The chance that a training batch is teacher-forced "
                                         "(else decoded from the model's own argmax).")
    beam_size: int = value(positive, doc="Decoding for val/test metrics and prediction: 1 greedy, > 1 beam "
                           "search.")
    length_penalty: float = value(non_negative, doc="Beam search's pick: sum log p / length ** this; 0: no "
                                  "normalisation.")
    max_length_ratio: float = value(non_negative, doc="Outputs stop at EOS or at floor(this * source length + "
                                    "max_length_offset) tokens, EOS included.")
    max_length_offset: int = value(non_negative, doc="Tokens added to the output limit (see max_length_ratio).")

    def check(self) -> None:
        super().check()
        self.check_one_step_calls("seq2seq decodes one step per call")
        per_sequence = [k for k in ("recurrent_dropout", "weight_drop") if getattr(self, k)]
        if per_sequence and self.teacher_forcing_ratio < 1:
            # a batch that is not teacher-forced decodes one LSTM call per token, each drawing its own mask
            raise ConfigError(f"model.{per_sequence[0]}", "draws one mask per sequence, but with "
                              "model.teacher_forcing_ratio < 1 the decoder runs one step per call, a new mask each "
                              "step: set model.teacher_forcing_ratio=1, or use model.zoneout_h / model.dropout")
        if self.max_length_ratio == 0 and self.max_length_offset == 0:
            raise ConfigError("model.max_length_offset", "with model.max_length_ratio=0 it is the output length "
                              "cap: must be > 0")
        if self.cell != "lstm":
            raise ConfigError("model.cell", "seq2seq hands the encoder's (h, c) to the decoder: it needs cell=lstm")


@dataclass(frozen=True)
class Decoding:
    """How :class:`Seq2Seq` trains its decoder and decodes (see the module docstring)."""

    teacher_forcing_ratio: float = 1.0
    beam_size: int = 1
    length_penalty: float = 0.0
    max_length_ratio: float = 2.0
    max_length_offset: int = 5


class Memory:
    """What the decoder reads from the encoder at every step: outputs, their attention keys, the source mask."""

    def __init__(self, outputs: Tensor, keys: Tensor | None, mask: Tensor) -> None:
        self.outputs, self.keys, self.mask = outputs, keys, mask  # (B, S, D*H), (B, S, H) or None, (B, S)

    def repeat(self, k: int) -> Memory:
        """Each source k times in a row, for a beam of k hypotheses per source."""
        keys = None if self.keys is None else self.keys.repeat_interleave(k, 0)
        return Memory(self.outputs.repeat_interleave(k, 0), keys, self.mask.repeat_interleave(k, 0))


class Attention(nn.Module):
    """Luong attention, "general" score, without input feeding."""

    def __init__(self, hidden_size: int, memory_size: int) -> None:
        super().__init__()
        self.key = nn.Linear(memory_size, hidden_size, bias=False)  # W_a, applied once per source
        self.combine = nn.Linear(memory_size + hidden_size, hidden_size)  # W_c

    def forward(self, query: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """query (N, T, H) -> attentional states (N, T, H) and weights (N, T, S), zero on source padding."""
        scores = query @ memory.keys.transpose(1, 2)
        scores = scores.masked_fill(~memory.mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = weights @ memory.outputs
        return torch.tanh(self.combine(torch.cat([context, query], dim=-1))), weights


class Seq2Seq(Model):
    name = "seq2seq"
    kind = "seq2seq"
    Config = Seq2SeqConfig

    def __init__(
        self, inputs: Inputs, target_vocab_size: int, stack: Stack, embedding_dim: int, attention: bool = False,
        decoding: Decoding = Decoding(), output_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(inputs, stack, embedding_dim)
        H, L, D = stack.hidden_size, stack.num_layers, 2 if stack.bidirectional else 1
        self.num_layers, self.directions = L, D
        if D == 2:
            self.bridge_h = nn.ModuleList(nn.Linear(2 * H, H) for _ in range(L))
            self.bridge_c = nn.ModuleList(nn.Linear(2 * H, H) for _ in range(L))
        self.embedding = nn.Embedding(target_vocab_size, embedding_dim)
        self.decoder = replace(stack, bidirectional=False).build(embedding_dim)
        self.attention = Attention(H, D * H) if attention else None
        # Dropout between layers leaves a 1-layer stack unregularised; this also reaches its outputs.
        self.dropout = nn.Dropout(output_dropout)
        self.head = nn.Linear(H, target_vocab_size)
        self.teacher_forcing_ratio = decoding.teacher_forcing_ratio
        self.beam_size, self.length_penalty = decoding.beam_size, decoding.length_penalty
        self.max_length_ratio, self.max_length_offset = decoding.max_length_ratio, decoding.max_length_offset

    @classmethod
    def build(cls, cfg: Seq2SeqConfig, task: Task) -> Seq2Seq:
        decoding = Decoding(cfg.teacher_forcing_ratio, cfg.beam_size, cfg.length_penalty, cfg.max_length_ratio,
                            cfg.max_length_offset)
        return cls(task.inputs, task.num_outputs, cfg.stack(), cfg.embedding_dim, cfg.attention, decoding,
                   cfg.output_dropout)

    # ---- pieces ---------------------------------------------------------------------------------------
    def encode(self, src: Tensor, lengths: Tensor | None) -> tuple[Memory, State]:
        """Encoder outputs (for attention) and the decoder's initial state, bridged from the encoder's."""
        lengths = _lengths(src, lengths)
        outputs, (h, c) = self.encoder(src, lengths)
        outputs = self.dropout(outputs)
        mask = torch.arange(src.shape[1], device=src.device) < lengths.to(src.device)[:, None]
        if self.directions == 2:  # (L*2, B, H): layer-major, forward before reverse
            h, c = (s.view(self.num_layers, 2, *s.shape[1:]) for s in (h, c))
            h = torch.stack([torch.tanh(f(torch.cat([h[k, 0], h[k, 1]], -1))) for k, f in enumerate(self.bridge_h)])
            c = torch.stack([f(torch.cat([c[k, 0], c[k, 1]], -1)) for k, f in enumerate(self.bridge_c)])
        keys = self.attention.key(outputs) if self.attention is not None else None
        return Memory(outputs, keys, mask), (h.contiguous(), c.contiguous())

    def _logits(self, out: Tensor, memory: Memory) -> Tensor:
        out = self.dropout(out)
        if self.attention is not None:
            out = self.attention(out, memory)[0]
        return self.head(out)

    def step(self, tokens: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        """One decoder step for every row: previous tokens (N,) -> logits (N, V) and the new state."""
        out, state = self.decoder(self.embedding(tokens[:, None]), state)
        return self._logits(out, memory)[:, 0], state

    def length_limit(self, lengths: Tensor) -> Tensor:
        """Most output tokens (EOS included) each source may get: floor(ratio * length + offset), >= 1."""
        limit = torch.floor(lengths.double() * self.max_length_ratio + self.max_length_offset).long()
        return limit.clamp(min=1)

    # ---- training ------------------------------------------------------------------------------------
    def forward(self, src: Tensor, lengths: Tensor | None, tgt: Tensor) -> Tensor:
        """Logits (B, T, V) for the target ``tgt`` (B, T) (its EOS included): teacher-forced, except, in
        training, for the batches the teacher-forcing coin sends through free-running decoding."""
        memory, state = self.encode(src, lengths)
        inputs = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)
        # The coin comes from the global RNG, which checkpoints save and restore.
        forced = not self.training or self.teacher_forcing_ratio >= 1.0
        if forced or float(torch.rand(())) < self.teacher_forcing_ratio:
            out, _ = self.decoder(self.embedding(inputs), state)
            return self._logits(out, memory)
        logits, token = [], inputs[:, 0]
        for _ in range(tgt.shape[1]):
            step_logits, state = self.step(token, state, memory)
            logits.append(step_logits)
            token = step_logits.argmax(-1)
        return torch.stack(logits, dim=1)

    # ---- decoding ------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, src: Tensor, lengths: Tensor | None = None, beam_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Output ids (B, T') (each sequence ends with EOS, then PAD; or without EOS at its length limit) and
        their scores (B,), the summed log-probabilities. ``beam_size`` None: the configured one."""
        beam_size = self.beam_size if beam_size is None else beam_size
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if beam_size == 1:
            return self.greedy(src, lengths)
        return self.beam_search(src, lengths, beam_size)

    @torch.no_grad()
    def greedy(self, src: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        memory, state = self.encode(src, lengths)
        B = src.shape[0]
        limit = self.length_limit(_lengths(src, lengths))
        token = torch.full((B,), BOS, dtype=torch.long, device=src.device)
        scores = torch.zeros(B, device=src.device)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        out = []
        limit = limit.to(src.device)
        for t in range(int(limit.max())):
            logits, state = self.step(token, state, memory)
            best, token = _never_pad_or_bos(F.log_softmax(logits.float(), dim=-1)).max(-1)
            scores = scores + best.masked_fill(finished, 0.0)
            token = token.masked_fill(finished, PAD)
            out.append(token)
            finished = finished | (token == EOS) | (t + 1 >= limit)
            if bool(finished.all()):
                break
        return torch.stack(out, dim=1), scores

    @torch.no_grad()
    def beam_search(self, src: Tensor, lengths: Tensor | None, beam_size: int) -> tuple[Tensor, Tensor]:
        K, B, device = beam_size, src.shape[0], src.device
        memory, (h, c) = self.encode(src, lengths)
        memory, state = memory.repeat(K), (h.repeat_interleave(K, 1), c.repeat_interleave(K, 1))
        limit = self.length_limit(_lengths(src, lengths)).to(device)[:, None]  # (B, 1)
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0  # the K beams start identical: expand the first only
        finished = torch.zeros(B, K, dtype=torch.bool, device=device)
        size = torch.zeros(B, K, dtype=torch.long, device=device)  # output tokens so far, EOS included
        tokens = torch.zeros(B, K, 0, dtype=torch.long, device=device)
        token = torch.full((B * K,), BOS, dtype=torch.long, device=device)
        offsets = torch.arange(B, device=device)[:, None] * K
        for t in range(int(limit.max())):
            logits, state = self.step(token, state, memory)
            logp = _never_pad_or_bos(F.log_softmax(logits.float(), dim=-1)).view(B, K, -1)
            V = logp.shape[-1]
            # A finished hypothesis continues only with PAD, at no cost: its score stays what it was.
            logp = logp.masked_fill(finished[..., None], float("-inf"))
            logp[..., PAD] = torch.where(finished, 0.0, logp[..., PAD])
            scores, index = (scores[..., None] + logp).view(B, K * V).topk(K, dim=-1)
            beam, token = index // V, index % V
            was_finished = finished.gather(1, beam)
            size = size.gather(1, beam) + (~was_finished).long()
            finished = was_finished | (token == EOS) | (t + 1 >= limit)
            tokens = torch.cat([tokens.gather(1, beam[..., None].expand(-1, -1, t)), token[..., None]], dim=-1)
            rows = (beam + offsets).view(-1)
            state = (state[0].index_select(1, rows), state[1].index_select(1, rows))
            token = token.view(-1)
            # Scores only fall: once the best hypothesis has ended, no other can overtake it (unnormalised).
            if bool(finished[:, 0].all() if self.length_penalty == 0 else finished.all()):
                break
        best = torch.zeros(B, dtype=torch.long, device=device)
        if self.length_penalty:
            best = (scores / size.clamp(min=1).double().pow(self.length_penalty)).argmax(-1)
        pick = torch.arange(B, device=device)
        return tokens[pick, best], scores[pick, best]


def _lengths(src: Tensor, lengths: Tensor | None) -> Tensor:
    """The source lengths as a CPU tensor (where the LSTM wants them); None: every row is full."""
    return torch.full((src.shape[0],), src.shape[1]) if lengths is None else torch.as_tensor(lengths).cpu()


def _never_pad_or_bos(logp: Tensor) -> Tensor:
    """Log-probabilities with PAD and BOS ruled out as outputs (the model is never trained to emit them); the
    others keep the model's values, so a score is still the model's log-probability of the sequence."""
    logp[:, PAD] = float("-inf")
    logp[:, BOS] = float("-inf")
    return logp
