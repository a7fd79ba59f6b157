"""What every tagging task shares: a tag per token, loss and metrics over real tokens, span F1 for BIO/BIOES.

Data. A tagging task hands :class:`TaggingTask` its sentences, ``(words, tags)`` pairs per split. Sentences
longer than ``task.seq_len`` are split into consecutive pieces of at most ``seq_len`` tokens (no token is
dropped, so the metrics cover every token; a piece starts without the context of the one before).
The vocabulary is the training words seen ``min_count`` times or more (lowercased with ``lowercase``), by
frequency; id 0 pads, id 1 is the unknown word. The tag set is every tag of the three splits, sorted (tags
are targets, never inputs: a tag that only val or test holds still needs an output to be scored). Both
travel in :meth:`TaggingTask.state_dict`, so a checkpoint tags new text without the data.

Characters: the character vocabulary is every character of the training words (case kept, also with
``lowercase``), id 0 pads, id 1 is an unknown character; it travels in the checkpoint too. Each token's
characters go into the batch, so a character-aware model (``model.char_dim``) reads an unknown word's spelling.

Batches (:class:`TaggingBatch`): ``x`` (B, T) word ids right-padded with 0, ``y`` (B, T) tag ids padded with
:data:`IGNORE`, ``lengths`` (B,), ``chars`` (B, T, L) each token's character ids right-padded with 0 (L: the
longest word of the batch). A tagging model is called as ``model(x, lengths, chars=chars)``. With
``task.word_dropout`` p, each real word of a training batch reads as the unknown word with probability p (drawn
from the epoch's seed, so a resumed run replays it), so that the unknown word's embedding is trained on words
of every kind (Kiperwasser and Goldberg 2016); validation, test and prediction never drop a word. Training
batches hold sentences of similar length (shuffled, then sorted within pools of 50 batches), which cuts the
padding the LSTM runs over; evaluation batches go by length too.

Metrics: ``loss`` (cross-entropy per real token), ``acc`` (token accuracy), and when the split has unknown
words (read as ``<unk>``) ``unk_acc`` and ``known_acc``, the accuracy on them and on the others; with a BIO or
BIOES tag set (``task.scheme``: auto detects it from the tags) also span ``precision``, ``recall`` and ``f1``
(micro), each sentence (piece) on its own, equal to the standard tools (tested against seqeval): BIO chunks by
conlleval's rules (:func:`bio_spans`, what seqeval's default mode does), BIOES chunks by seqeval's strict
IOBES rules (:func:`bioes_spans`). At each evaluation the first val sentences, as the model tags them, go
to TensorBoard's text tab (:meth:`TaggingTask.samples`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_train.errors import ConfigError, UsageError
from lstm_train.schema import one_of, positive, probability, value

from .base import Batch, Example, Inputs, Metrics, Split, Task, TaskConfig, needs_text
from .data import Vocab, pad, seeded
from .files import shown

IGNORE = -100  # the tag id of padding: F.cross_entropy's default ignore_index
PAD, UNK = "<pad>", "<unk>"
UNK_ID = 1  # the unknown word's id: every tagging vocabulary starts with PAD, UNK
Sentence = tuple[list[str], list[str]]  # (words, tags), one tag per word
# a sentence as ids: word ids (T,), tag ids (T,), character ids (T, L) int32 (None: the task has no characters)
Encoded = tuple[Tensor, Tensor, Tensor | None]
POOL = 50  # training batches sorted by length together
NUM_SAMPLES = 3  # val sentences tagged into TensorBoard's text tab at each evaluation


# ---- spans: conlleval's rules for BIO, seqeval's strict IOBES for BIOES ---------------------------------
Span = tuple[str, int, int]  # (type, start, end), end exclusive


def split_tag(tag: str) -> tuple[str, str]:
    """``B-PER`` -> (``B``, ``PER``), split at the first dash as conlleval does; ``O`` -> (``O``, ``""``)."""
    prefix, dash, kind = tag.partition("-")
    return (prefix, kind) if dash else (tag, "")


def bio_spans(tags: Sequence[str]) -> set[Span]:
    """The chunks of a BIO sentence by conlleval's rules (seqeval's default mode): a chunk starts at ``B-X``,
    or at an ``I-X`` that does not continue a chunk of type X (after ``O`` or ``B-Y``/``I-Y``), and runs over
    the ``I-X`` that follow."""
    spans: set[Span] = set()
    start, kind = None, ""
    for i, tag in enumerate([*tags, "O"]):  # a final O closes an open chunk
        prefix, t = split_tag(tag)
        continues = start is not None and prefix == "I" and t == kind
        if start is not None and not continues:
            spans.add((kind, start, i))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, t
    return spans


def bioes_spans(tags: Sequence[str]) -> set[Span]:
    """The chunks of a BIOES sentence by seqeval's strict IOBES rules: ``S-X``, or ``B-X (I-X)* E-X``; any
    other run (a ``B-X`` never closed by ``E-X``, an ``I-X`` or ``E-X`` outside such a run, a change of type
    inside one) is no chunk at all."""
    spans: set[Span] = set()
    start, kind = None, ""
    for i, tag in enumerate(tags):
        prefix, t = split_tag(tag)
        if start is not None and prefix in ("I", "E") and t == kind:
            if prefix == "E":
                spans.add((kind, start, i + 1))
                start = None
            continue
        start = None
        if prefix == "S":
            spans.add((t, i, i + 1))
        elif prefix == "B":
            start, kind = i, t
    return spans


SPANS = {"bio": bio_spans, "bioes": bioes_spans}


def span_counts(gold: Sequence[str], guess: Sequence[str], scheme: str) -> tuple[int, int, int]:
    """(correct, gold, guessed) chunk counts of one sentence: a guessed chunk is correct when a gold chunk has
    its type, start and end."""
    gold_spans, guess_spans = SPANS[scheme](gold), SPANS[scheme](guess)
    return len(gold_spans & guess_spans), len(gold_spans), len(guess_spans)


SCHEME_PREFIXES = {"bio": "BI", "bioes": "BIES"}


def tag_prefixes(tags: Sequence[str]) -> set[str] | None:
    """The prefixes of tags that are all ``O`` or ``[BIES]-TYPE``; None if any other tag is there."""
    prefixes = set()
    for tag in tags:
        if tag != "O":
            match = re.fullmatch(r"([BIES])-(.+)", tag)
            if match is None:
                return None
            prefixes.add(match.group(1))
    return prefixes


def bioes_shaped(prefixes: set[str]) -> bool:
    """Whether chunks with these prefixes can be valid BIOES: ``B-`` and ``E-`` together, ``I-`` only with them."""
    return bool(prefixes) and ("B" in prefixes) == ("E" in prefixes) and ("I" not in prefixes or "B" in prefixes)


def detect_scheme(tags: Sequence[str]) -> str:
    """``bio`` if the tags are ``O`` and ``B-``/``I-TYPE``; ``bioes`` if they are ``O`` and ``B-``/``I-``/``E-``/
    ``S-TYPE`` that can make BIOES chunks (:func:`bioes_shaped`); else ``none`` (POS tags, IOE, mixtures)."""
    prefixes = tag_prefixes(tags)
    if not prefixes:
        return "none"
    if prefixes <= set(SCHEME_PREFIXES["bio"]):
        return "bio"
    return "bioes" if bioes_shaped(prefixes) else "none"


@dataclass
class TaggingBatch(Batch):
    chars: Tensor | None = None  # (B, T, L) each token's character ids, right-padded with 0; None: no characters

    def to(self, device: torch.device) -> TaggingBatch:
        moved = super().to(device)
        chars = None if self.chars is None else self.chars.to(device, non_blocking=True)
        return TaggingBatch(moved.x, moved.y, moved.lengths, chars)


# ---- metrics -------------------------------------------------------------------------------------------
class TaggingMetrics(Metrics):
    """Token loss and accuracy over real tokens (padding never counts); with ``unknown_words``, the accuracy on
    the words read as :data:`UNK_ID` and on the others apart; span P/R/F1 with a chunk scheme."""

    def __init__(self, tags: Sequence[str], scheme: str, unknown_words: bool = False) -> None:
        # a flag, not the id: every number here is a sum that a data-parallel run adds up over its processes
        self.tags, self.scheme, self.unknown_words = list(tags), scheme, unknown_words
        self.loss_sum: Tensor | float = 0.0
        self.correct: Tensor | int = 0
        self.count: Tensor | int = 0
        self.unk_correct: Tensor | int = 0
        self.unk_count: Tensor | int = 0
        self.chunks = [0, 0, 0]  # correct, gold, guessed

    def update(self, output: Tensor, batch: Batch, loss: Tensor) -> None:
        real = batch.y != IGNORE
        n = real.sum()
        predicted = output.detach().argmax(-1)
        self.loss_sum = self.loss_sum + loss.detach() * n
        right = predicted == batch.y
        self.correct = self.correct + right[real].sum()
        self.count = self.count + n
        if self.unknown_words:
            unknown = real & (batch.x == UNK_ID)
            self.unk_correct = self.unk_correct + right[unknown].sum()
            self.unk_count = self.unk_count + unknown.sum()
        if self.scheme != "none":  # chunks need the tag strings: one copy to the CPU per batch
            lengths = real.sum(1).tolist()
            for gold, guess, length in zip(batch.y.tolist(), predicted.tolist(), lengths, strict=True):
                gold_tags, guess_tags = [self.tags[i] for i in gold[:length]], [self.tags[i] for i in guess[:length]]
                counts = span_counts(gold_tags, guess_tags, self.scheme)
                self.chunks = [a + b for a, b in zip(self.chunks, counts, strict=True)]

    def compute(self) -> dict[str, float]:
        count = int(self.count)
        if not count:
            return {}
        result = {"loss": float(self.loss_sum) / count, "acc": float(self.correct) / count}
        unk_count, unk_correct = int(self.unk_count), int(self.unk_correct)
        if unk_count:  # a split without unknown words (synthetic data) has one accuracy
            result["unk_acc"] = unk_correct / unk_count
            if count > unk_count:
                result["known_acc"] = (int(self.correct) - unk_correct) / (count - unk_count)
        if self.scheme != "none":
            correct, gold, guessed = self.chunks
            precision = correct / guessed if guessed else 0.0
            recall = correct / gold if gold else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            result |= {"precision": precision, "recall": recall, "f1": f1}
        return result


# ---- the task ------------------------------------------------------------------------------------------
@dataclass
class TaggedTextConfig(TaskConfig):  # conll, brown_pos: tagged sentences from files
    scheme: str = value(one_of("auto", "bio", "bioes", "none"), doc="Tag scheme: bio/bioes add span precision, "
                        "recall and F1; auto: detect it; none: tokens only.")
    lowercase: bool = value(doc="Lowercase the words.")
    min_count: int = value(positive, doc="Training words seen fewer times than this become <unk>.")
    seq_len: int = value(positive, doc="Longer sentences are split into pieces of at most this many tokens.")
    train_size: int | None = value(positive, doc="At most this many training sentences (pieces); null: all.")
    val_size: int | None = value(positive, doc="At most this many val sentences; null: all.")
    test_size: int | None = value(positive, doc="At most this many test sentences; null: all.")
    word_dropout: float = value(probability, doc="In training, each word reads as <unk> with this probability "
                                "(trains <unk>).")


FORMATS = ("slash", "columns", "tags")  # lstm-predict --format


class TaggingTask(Task):
    """A tag per token. Subclasses implement :meth:`read` (the sentences of each split), or :meth:`_load`."""

    kind = "tagging"
    # unk_acc and known_acc are reported, not monitored: a split without unknown words has neither
    metric_names: tuple[str, ...] = ("loss", "acc")
    higher_is_better: ClassVar[dict[str, bool]] = {
        "loss": False,
        "acc": True,
        "precision": True,
        "recall": True,
        "f1": True,
    }

    def __init__(self, cfg: Any, state: dict | None = None) -> None:
        self.seq_len = cfg.seq_len
        text = isinstance(cfg, TaggedTextConfig)
        self.lowercase = text and cfg.lowercase  # synthetic words have no case
        self.word_dropout = cfg.word_dropout if text else 0.0
        if state is not None:  # from a checkpoint: vocabulary, characters, tags and scheme only
            self.vocab, self.tags, self.scheme = Vocab(state["words"], UNK), state["tags"], state["scheme"]
            # a checkpoint from before the characters has none (its model reads words only)
            self.chars = Vocab(state["chars"], UNK) if "chars" in state else None
            self.data: dict[str, list[Encoded]] = {}
        else:
            self._load(cfg)
        self.inputs = Inputs(vocab_size=len(self.vocab), chars=None if self.chars is None else len(self.chars))
        self.num_outputs = len(self.tags)
        if self.scheme != "none":
            self.metric_names = ("loss", "acc", "precision", "recall", "f1")

    def read(self, cfg: Any) -> dict[str, list[Sentence]]:
        """The sentences of train, val and test."""
        raise NotImplementedError

    def _load(self, cfg: TaggedTextConfig) -> None:
        sentences = self.read(cfg)
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        for split, size in sizes.items():
            pieces = [piece for sentence in sentences[split] for piece in self.pieces(sentence)]
            sentences[split] = pieces[:size] if size else pieces
            if not sentences[split]:
                raise ConfigError("task", f"the {split} split has no sentences")
        self.tags = sorted({t for split in sentences.values() for _, tags in split for t in tags})
        self.scheme = self._scheme(cfg.scheme, self.tags)
        counts = Counter(w for words, _ in sentences["train"] for w in self.normalize(words))
        # a text's own "<unk>" is read as the unknown word
        self.vocab = Vocab.counted([PAD, UNK], counts, cfg.min_count, UNK)
        self.chars = Vocab.counted([PAD, UNK], Counter(c for words, _ in sentences["train"] for w in words for c in w),
                                   1, UNK)
        tag_id = {t: i for i, t in enumerate(self.tags)}
        self.data = {
            split: [(self.encode(words), torch.tensor([tag_id[t] for t in tags]), self.spell(words))
                    for words, tags in part]
            for split, part in sentences.items()
        }

    @staticmethod
    def _scheme(scheme: str, tags: list[str]) -> str:
        """The scheme to score spans by: ``auto`` -> :func:`detect_scheme`; a named one must fit the tags."""
        found = detect_scheme(tags)
        if scheme == "auto":
            return found
        if scheme in ("none", found):
            return scheme
        allowed, prefixes = set(SCHEME_PREFIXES[scheme]), tag_prefixes(tags)
        if prefixes is None or not prefixes <= allowed:
            odd = next(t for t in tags if t != "O" and not allowed >= (tag_prefixes([t]) or {"?"}))
            problem = f"{scheme} needs tags O or {'/'.join(SCHEME_PREFIXES[scheme])}-TYPE; the data has {shown(odd)}"
            raise ConfigError("task.scheme", f"{problem} (use scheme=auto or none)")
        if not prefixes:
            raise ConfigError("task.scheme", "every tag is O: there are no chunks to score (use scheme=none)")
        if found == "bio":  # scheme == "bioes"
            raise ConfigError(
                "task.scheme",
                "bioes scores only chunks that end in E- or S- (seqeval's strict IOBES), and these tags are "
                "B-/I- only (BIO): use scheme=bio or auto",
            )
        raise ConfigError(
            "task.scheme",
            f"tags with the prefixes {'/'.join(sorted(prefixes))} cannot make BIOES chunks (B- needs E-, I- needs "
            "B-): fix the tags or use scheme=none",
        )

    def pieces(self, sentence: Sentence) -> list[Sentence]:
        words, tags = sentence
        return [(words[i : i + self.seq_len], tags[i : i + self.seq_len]) for i in range(0, len(words), self.seq_len)]

    def normalize(self, words: Sequence[str]) -> list[str]:
        return [w.lower() for w in words] if self.lowercase else list(words)

    def encode(self, words: Sequence[str]) -> Tensor:
        """Word ids of a sentence (unknown words: 1), any length."""
        return torch.tensor(self.vocab.encode(self.normalize(words)), dtype=torch.long)

    def spell(self, words: Sequence[str]) -> Tensor | None:
        """(len(words), longest word) int32 character ids of each word, right-padded with 0 (unknown
        characters: 1); None if the task has no characters."""
        if self.chars is None:
            return None
        longest = max(map(len, words), default=0)
        return torch.tensor([[*self.chars.encode(w), *[0] * (longest - len(w))] for w in words], dtype=torch.int32)

    def batch(self, sentences: Sequence[Sequence[str]]) -> TaggingBatch:
        """A batch of new sentences (lists of words) to tag; their tags are all 0."""
        return pad_tagged([(self.encode(w), torch.zeros(len(w), dtype=torch.long), self.spell(w)) for w in sentences])

    def state_dict(self) -> dict:
        state = {"words": self.vocab.tokens, "tags": self.tags, "scheme": self.scheme}
        return state if self.chars is None else {**state, "chars": self.chars.tokens}

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch.x, batch.lengths, chars=batch.chars)

    def samples(self, model: nn.Module) -> dict[str, str]:
        """The first val sentences as the model tags them, ``word/TAG``, a wrong tag followed by ``(gold=TAG)``.
        Run in eval mode (no dropout), so the global RNG is untouched; the model's mode is restored."""
        pairs = self.data.get("val", [])[:NUM_SAMPLES]
        if not pairs:
            return {}
        batch = pad_tagged(pairs).to(next(model.parameters()).device)
        training = model.training
        model.eval()
        with torch.no_grad():
            predicted = self.forward(model, batch).argmax(-1).tolist()
        model.train(training)
        lines = []
        for (x, y, _), guess in zip(pairs, predicted, strict=True):
            tokens = [
                f"{self.vocab.tokens[w]}/{self.tags[p]}" + ("" if p == g else f"(gold={self.tags[g]})")
                for w, g, p in zip(x.tolist(), y.tolist(), guess, strict=False)
            ]
            lines.append(" ".join(tokens))
        return {"samples": "\n".join(lines)}

    def loss(self, output: Tensor, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten(), ignore_index=IGNORE,
                               label_smoothing=label_smoothing)

    def loss_weight(self, batch: Batch) -> float:
        return int((batch.y != IGNORE).sum())

    def new_metrics(self) -> Metrics:
        return TaggingMetrics(self.tags, self.scheme, unknown_words=True)

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.data["train"]) / batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        batches = bucketed(self.data["train"], batch_size, seeded("train", seed, epoch))
        if not self.word_dropout:
            return batches
        return drop_words(batches, self.word_dropout, seeded("word_dropout", seed, epoch))

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        data = sorted(self.data[split], key=lambda pair: len(pair[0]))  # stable: a fixed order
        for start in range(0, len(data), batch_size):
            yield pad_tagged(data[start : start + batch_size])

    # ---- the command-line tools --------------------------------------------------------------------------
    predict_options: ClassVar[dict[str, dict[str, Any]]] = {
        "--format": {"choices": FORMATS, "default": "slash",
                     "help": "tagger output: word/TAG (default), word<TAB>TAG lines, or the tags only"},
    }

    def predict_line(self, model: nn.Module, line: str, format: str = "slash") -> str:
        """The tags of the line's words (split at whitespace), as ``word/TAG``, ``word<TAB>TAG`` lines with a blank
        line after the sentence (CoNLL-style ``columns``), or the tags alone."""
        words = line.split()
        if not words:
            return ""
        logits = self.forward(model, self.batch([words]).to(next(model.parameters()).device))
        tags = [self.tags[i] for i in logits[0].argmax(-1).tolist()]
        if format == "tags":
            return " ".join(tags)
        if format == "columns":
            return "".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True))
        return " ".join(f"{w}/{t}" for w, t in zip(words, tags, strict=True))

    def unknown_tokens(self, text: str) -> tuple[list[str], int]:
        words = text.split()
        return [w for w, n in zip(words, self.normalize(words), strict=True) if n not in self.vocab.index], len(words)

    def example(self, text: str | None, seed: int) -> Example:
        """A sentence, its words split at whitespace."""
        words = needs_text(self, text).split()
        if not words:
            raise UsageError("the sentence has no words")
        return Example(self.batch([words]), words, [], None)


def bucketed(data: Sequence[Encoded], batch_size: int, generator: torch.Generator) -> Iterator[TaggingBatch]:
    """Shuffled batches of similar lengths: shuffle, sort pools of POOL batches by length, shuffle the batches."""
    order = torch.randperm(len(data), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size * POOL):
        pool = sorted(order[start : start + batch_size * POOL], key=lambda i: len(data[i][0]))
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    for b in torch.randperm(len(batches), generator=generator).tolist():
        yield pad_tagged([data[i] for i in batches[b]])


def pad_tagged(sentences: Sequence[Encoded]) -> TaggingBatch:
    """Words right-padded with 0, tags with :data:`IGNORE`, the true lengths (on the CPU), and the characters
    (B, T, L) right-padded with 0 (None if the sentences have none)."""
    xs, ys, spellings = zip(*sentences, strict=True)
    x, lengths = pad(xs)
    chars = None
    if spellings[0] is not None:
        chars = torch.zeros(*x.shape, max(s.shape[1] for s in spellings), dtype=torch.long)
        for row, s in zip(chars, spellings, strict=True):
            row[: s.shape[0], : s.shape[1]] = s
    return TaggingBatch(x, pad(ys, IGNORE)[0], lengths, chars)


def drop_words(batches: Iterator[TaggingBatch], p: float, generator: torch.Generator) -> Iterator[TaggingBatch]:
    """The batches with each real word (not padding) read as :data:`UNK_ID` with probability ``p``; the
    characters stay the word's own."""
    for batch in batches:
        dropped = (torch.rand(batch.x.shape, generator=generator) < p) & (batch.x != 0)
        yield replace(batch, x=batch.x.masked_fill(dropped, UNK_ID))
