"""What every sequence-to-sequence task shares: vocabularies, padded batches, decoding metrics, transduction.

Batches: ``x`` (B, S) source ids right-padded with :data:`PAD`, ``lengths`` (B,) their true lengths;
``y`` (B, T) target ids, each target followed by :data:`EOS`, then :data:`PAD` (its length is the count of
non-pad ids). :class:`Seq2SeqBatch` adds ``refs``: every acceptable output of each source, for metrics
(g2p words with several pronunciations); None means ``y`` alone.

Training and evaluation differ on purpose. In training, :meth:`Seq2SeqTask.forward` is the model's
teacher-forced logits (with the model's teacher-forcing ratio) and only ``loss`` is reported. In evaluation
(``model.training`` is False), it returns the teacher-forced logits, for ``loss``, *and* free-running decodes
(greedy, or beam search with ``model.beam_size`` > 1), for everything else: ``acc``, ``exact`` (and ``per``
for g2p) measure what the model outputs on its own, never under teacher forcing.

- ``acc``: position-wise token accuracy. A decoded sequence and its reference (both without EOS) are compared
  position by position; matches are summed over the split and divided by the summed length of the longer of
  the two, so a too-short or too-long output loses the positions it misses or adds, and acc is 1 exactly
  when every sequence matches.
- ``exact``: the fraction of sources whose output equals a reference (any of ``refs``).
- ``per`` (g2p): total edit distance to the closest reference over the total length of those references.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_train.errors import UsageError

from .base import Batch, Inputs, Metrics, Split, Task
from .data import Vocab, pad

PAD, BOS, EOS, UNK = 0, 1, 2, 3  # the same ids in source and target vocabularies
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def token_vocab(tokens: Iterable[str]) -> Vocab:
    """The four :data:`SPECIALS` (ids PAD, BOS, EOS, UNK), then ``tokens``; unknown tokens become UNK."""
    return Vocab([*SPECIALS, *(t for t in tokens if t not in SPECIALS)], unknown=SPECIALS[UNK])


@dataclass
class Seq2SeqBatch(Batch):
    refs: list[list[tuple[int, ...]]] | None = None  # per source, every acceptable output (no EOS); None: y

    def to(self, device: torch.device) -> Seq2SeqBatch:
        moved = super().to(device)
        return Seq2SeqBatch(moved.x, moved.y, moved.lengths, self.refs)

    def references(self) -> list[list[tuple[int, ...]]]:
        return self.refs if self.refs is not None else [[seq] for seq in strip(self.y)]


@dataclass
class Seq2SeqOutput:
    """What :meth:`Seq2SeqTask.forward` returns in evaluation: teacher-forced logits and free-running outputs."""

    logits: Tensor  # (B, T, V), teacher-forced: for the loss
    decoded: list[tuple[int, ...]]  # per source, the model's own output ids without EOS


def make_batch(
    sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], refs: list[list[tuple[int, ...]]] | None = None
) -> Seq2SeqBatch:
    """Right-padded sources with their lengths, and targets with EOS appended (none of them may be empty)."""
    x, lengths = pad(sources, PAD)
    y, _ = pad([[*t, EOS] for t in targets], PAD)
    return Seq2SeqBatch(x, y, lengths, refs)


def strip(ids: Tensor) -> list[tuple[int, ...]]:
    """Rows of ids (B, T) cut at the first EOS or PAD, as tuples."""
    out = []
    for row in ids.tolist():
        end = next((i for i, t in enumerate(row) if t in (EOS, PAD)), len(row))
        out.append(tuple(row[:end]))
    return out


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each costing 1), one row at a time."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class Seq2SeqMetrics(Metrics):
    """loss (teacher-forced, per target token incl. EOS); acc, exact (and per) from the decoded outputs."""

    def __init__(self, per: bool = False) -> None:
        self.per = per
        self.loss_sum: Tensor | float = 0.0
        self.tokens = 0
        self.matches = self.positions = 0
        self.exact = self.sequences = 0
        self.edits = self.ref_length = 0

    def update(self, output: Tensor | Seq2SeqOutput, batch: Batch, loss: Tensor) -> None:
        n = int((batch.y != PAD).sum())
        self.loss_sum = self.loss_sum + loss.detach() * n
        self.tokens += n
        if not isinstance(output, Seq2SeqOutput):  # training: teacher-forced logits only
            return
        refs = batch.references() if isinstance(batch, Seq2SeqBatch) else [[r] for r in strip(batch.y)]
        for pred, options in zip(output.decoded, refs, strict=True):
            first = options[0]
            self.matches += sum(p == r for p, r in zip(pred, first, strict=False))
            self.positions += max(len(pred), len(first))
            self.exact += pred in options
            self.sequences += 1
            if self.per:
                distance, length = min((edit_distance(pred, r), len(r)) for r in options)
                self.edits += distance
                self.ref_length += length

    def compute(self) -> dict[str, float]:
        if not self.tokens:
            return {}
        result = {"loss": float(torch.as_tensor(self.loss_sum, dtype=torch.float64)) / self.tokens}
        if self.sequences:
            result["acc"] = self.matches / max(self.positions, 1)
            result["exact"] = self.exact / self.sequences
            if self.per:
                result["per"] = self.edits / max(self.ref_length, 1)
        return result


class Seq2SeqTask(Task):
    """A source sequence of tokens -> a target sequence of tokens. Subclasses fill ``self.data``
    (split -> (sources, targets, refs or None), ids without EOS), ``source_vocab`` and ``target_vocab``,
    and say how a line of text becomes source tokens and target tokens become text."""

    kind = "seq2seq"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "acc", "exact")
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False, "acc": True, "exact": True, "per": False}
    source_vocab: Vocab
    target_vocab: Vocab
    num_samples: int = 0  # val examples decoded into TensorBoard's text tab at each evaluation
    data: dict[str, tuple[list[list[int]], list[list[int]], list[list[tuple[int, ...]]] | None]]

    def set_vocabs(self, source: Vocab, target: Vocab) -> None:
        self.source_vocab, self.target_vocab = source, target
        self.inputs = Inputs(vocab_size=len(source))
        self.num_outputs = len(target)

    # ---- text <-> tokens: what prediction from the command line needs ----------------------------------
    def source_tokens(self, line: str) -> list[str]:
        return line.split()

    def target_text(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)

    def source_text(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)

    # ---- batches -------------------------------------------------------------------------------------
    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        sources, targets, refs = self.data[split]
        for start in range(0, len(sources), batch_size):
            part = slice(start, start + batch_size)
            yield make_batch(sources[part], targets[part], refs[part] if refs is not None else None)

    def forward(self, model: nn.Module, batch: Batch) -> Tensor | Seq2SeqOutput:
        logits = model(batch.x, batch.lengths, batch.y)
        if model.training:
            return logits
        return Seq2SeqOutput(logits, strip(model.decode(batch.x, batch.lengths)[0]))

    def loss(self, output: Tensor | Seq2SeqOutput, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
        logits = output.logits if isinstance(output, Seq2SeqOutput) else output
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.y.reshape(-1), ignore_index=PAD,
                               label_smoothing=label_smoothing)

    def loss_weight(self, batch: Batch) -> float:
        return int((batch.y != PAD).sum())

    def new_metrics(self) -> Metrics:
        return Seq2SeqMetrics(per="per" in self.metric_names)

    def samples(self, model: nn.Module) -> dict[str, str]:
        """The first ``num_samples`` val sources with their (first) reference and the model's decoded output,
        one per row, and whether it is exact (equal to any reference). Decoding draws no random numbers, so
        the global RNG is untouched."""
        if not self.num_samples or "val" not in self.data:
            return {}
        sources, targets, refs = self.data["val"]
        n = min(self.num_samples, len(sources))
        src = [self.source_text(self.source_vocab.decode(s)) for s in sources[:n]]
        options = [refs[i] if refs is not None else [tuple(targets[i])] for i in range(n)]
        texts = [[self.target_text(self.target_vocab.decode(r)) for r in rs] for rs in options]
        pred = list(transduce(model, self, src))
        rows = [
            f"| {s} | {t[0]} | {p} | {'yes' if p in t else 'no'} |" for s, t, p in zip(src, texts, pred, strict=True)
        ]
        return {"samples": "\n".join(["| source | reference | decoded | exact |", "|---|---|---|---|", *rows])}

    def state_dict(self) -> dict:
        return {"source_vocab": self.source_vocab.tokens, "target_vocab": self.target_vocab.tokens}

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.data["train"][0]) / batch_size)

    # ---- the command-line tools --------------------------------------------------------------------------
    predict_options: ClassVar[dict[str, dict[str, Any]]] = {
        "--beam-size": {"type": int, "default": None, "help": "seq2seq decoding: 1 greedy, > 1 beam search "
                        "(default: the checkpoint's model.beam_size)"},
    }

    def predict_line(self, model: nn.Module, line: str, beam_size: int | None = None) -> str:
        """One input line -> its decoded output (g2p: a word -> its phonemes; synthetic tasks: symbols separated
        by spaces), with ``beam_size`` (None: the model's)."""
        if beam_size is not None and beam_size < 1:
            raise UsageError(f"--beam-size: must be >= 1, got {beam_size}")
        return next(transduce(model, self, [line], beam_size=beam_size))

    def unknown_tokens(self, text: str) -> tuple[list[str], int]:
        tokens = self.source_tokens(text)
        return [t for t in tokens if t not in self.source_vocab.index], len(tokens)


def transduce(
    model: nn.Module, task: Seq2SeqTask, lines: Iterable[str], beam_size: int | None = None, batch_size: int = 256
) -> Iterator[str]:
    """The model's output for each input line (source tokens as the task reads a line), in order, decoded
    greedily or with a beam (``beam_size``; None: the model's own setting). An empty line gives an empty
    output. Batches of ``batch_size`` lines run at once; the model is in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == batch_size:
                yield from _transduce_chunk(model, task, chunk, beam_size, device)
                chunk = []
        if chunk:
            yield from _transduce_chunk(model, task, chunk, beam_size, device)
    finally:
        model.train(was_training)


def _transduce_chunk(
    model: nn.Module, task: Seq2SeqTask, lines: list[str], beam_size: int | None, device: torch.device
) -> list[str]:
    ids = [task.source_vocab.encode(task.source_tokens(line)) for line in lines]
    keep = [i for i, s in enumerate(ids) if s]
    out = [""] * len(lines)
    if keep:
        x, lengths = pad([ids[i] for i in keep], PAD)
        with torch.inference_mode():
            tokens, _ = model.decode(x.to(device), lengths, beam_size=beam_size)
        for i, seq in zip(keep, strip(tokens), strict=True):
            out[i] = task.target_text(task.target_vocab.decode(seq))
    return out

