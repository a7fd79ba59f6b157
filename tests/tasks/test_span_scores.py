"""Span precision/recall/F1 equal seqeval's, exactly: its default mode (conlleval's rules) for BIO, its strict
IOBES mode for BIOES; counts and micro scores, on random tag sequences, valid and invalid. Dev only (seqeval
is a dev extra): skipped where it is not installed."""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_train.tasks import Batch
from lstm_train.tasks.tagging import IGNORE, TaggingMetrics, detect_scheme, span_counts

seqeval = pytest.importorskip("seqeval")
from seqeval.metrics import f1_score, precision_score, recall_score  # noqa: E402
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402
from seqeval.scheme import IOB2, IOBES, Entities, auto_detect  # noqa: E402

TYPES = ("PER", "LOC", "A-B")  # a type with a dash of its own
PREFIXES = {"bio": "BI", "bioes": "BIES"}


def all_tags(scheme: str) -> list[str]:
    return ["O", *(f"{p}-{t}" for p in PREFIXES[scheme] for t in TYPES)]


def seqeval_scores(gold: list[list[str]], guess: list[list[str]], scheme: str) -> dict[str, float]:
    kwargs = {} if scheme == "bio" else {"mode": "strict", "scheme": IOBES}
    with warnings.catch_warnings():  # no chunk guessed (or none in gold): seqeval warns and scores 0, as we do
        warnings.simplefilter("ignore")
        return {
            "precision": precision_score(gold, guess, **kwargs),
            "recall": recall_score(gold, guess, **kwargs),
            "f1": f1_score(gold, guess, **kwargs),
        }


def seqeval_counts(gold: list[list[str]], guess: list[list[str]], scheme: str) -> list[int]:
    """[correct, gold, guessed] chunks as seqeval extracts them."""
    if scheme == "bio":  # get_entities joins the sentences with an O between them: offsets stay unique
        gold_set, guess_set = set(get_entities(gold)), set(get_entities(guess))
    else:
        gold_set, guess_set = ({e.to_tuple() for s in Entities(x, IOBES).entities for e in s} for x in (gold, guess))
    return [len(gold_set & guess_set), len(gold_set), len(guess_set)]


def our_metrics(gold: list[list[str]], guess: list[list[str]], scheme: str) -> TaggingMetrics:
    """The sentences through TaggingMetrics as training scores them: one padded batch of one-hot outputs."""
    tags = all_tags(scheme)
    index = {t: i for i, t in enumerate(tags)}
    metrics = TaggingMetrics(tags, scheme)
    length = max(map(len, gold))
    y = torch.full((len(gold), length), IGNORE)
    predicted = torch.zeros(len(gold), length, dtype=torch.long)
    for i, (g, p) in enumerate(zip(gold, guess, strict=True)):
        y[i, : len(g)] = torch.tensor([index[t] for t in g])
        predicted[i, : len(p)] = torch.tensor([index[t] for t in p])
    batch = Batch(torch.zeros_like(predicted), y, torch.tensor([len(g) for g in gold]))
    metrics.update(F.one_hot(predicted, len(tags)).float(), batch, torch.tensor(0.0))
    return metrics


def assert_same_as_seqeval(gold: list[list[str]], guess: list[list[str]], scheme: str) -> None:
    metrics = our_metrics(gold, guess, scheme)
    assert metrics.chunks == seqeval_counts(gold, guess, scheme)
    ours = {k: v for k, v in metrics.compute().items() if k in ("precision", "recall", "f1")}
    assert ours == seqeval_scores(gold, guess, scheme)  # exact: the same divisions in the same order
    by_sentence = [span_counts(g, p, scheme) for g, p in zip(gold, guess, strict=True)]
    assert [sum(c) for c in zip(*by_sentence, strict=True)] == metrics.chunks


def valid_sentence(rng: random.Random, scheme: str, length: int) -> list[str]:
    """Well-formed chunks (BIO: B- I-*; BIOES: S-, or B- I-* E-) between O tokens."""
    tags: list[str] = []
    while len(tags) < length:
        n, kind = rng.randint(1, 4), rng.choice(TYPES)
        if rng.random() < 0.4:
            tags.append("O")
        elif scheme == "bio":
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)
        else:
            tags += [f"S-{kind}"] if n == 1 else [f"B-{kind}"] + [f"I-{kind}"] * (n - 2) + [f"E-{kind}"]
    return tags[:length]  # the cut may leave the last chunk unclosed: invalid BIOES on purpose


def mutated(rng: random.Random, tags: list[str], scheme: str, rate: float) -> list[str]:
    return [rng.choice(all_tags(scheme)) if rng.random() < rate else t for t in tags]


@st.composite
def corpora(draw: st.DrawFn) -> tuple[list[list[str]], list[list[str]], str]:
    """A few sentences: gold valid or random, the guess a mutation of gold (rate 0: identical; 1: random)."""
    scheme = draw(st.sampled_from(["bio", "bioes"]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    gold, guess = [], []
    for length in draw(st.lists(st.integers(1, 12), min_size=1, max_size=6)):
        g = valid_sentence(rng, scheme, length)
        g = mutated(rng, g, scheme, draw(st.sampled_from([0.0, 0.2, 1.0])))
        gold.append(g)
        guess.append(mutated(rng, g, scheme, draw(st.sampled_from([0.0, 0.1, 0.3, 1.0]))))
    return gold, guess, scheme


@settings(max_examples=200, deadline=None)
@given(corpora())
def test_span_scores_equal_seqeval(corpus):
    assert_same_as_seqeval(*corpus)


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_span_scores_equal_seqeval_on_a_large_random_corpus(scheme):
    rng = random.Random(0)
    gold = [valid_sentence(rng, scheme, rng.randint(1, 30)) for _ in range(1500)]
    guess = [mutated(rng, g, scheme, rng.choice([0.0, 0.05, 0.2, 1.0])) for g in gold]
    gold = [mutated(rng, g, scheme, 0.02) for g in gold]  # a few invalid gold chunks too
    assert_same_as_seqeval(gold, guess, scheme)
    metrics = our_metrics(gold, guess, scheme).compute()
    assert 0.3 < metrics["f1"] < 1  # neither trivial nor empty


@pytest.mark.parametrize(
    ("gold", "guess"),
    [
        ("B-PER S-PER", "B-PER S-PER"),  # the cases: invalid BIOES guesses
        ("B-PER E-PER", "I-PER S-PER"),
        ("O O O", "O O O"),  # no chunk anywhere: every score 0
        ("S-PER O", "O O"),
    ],
)
def test_named_bioes_cases_equal_seqeval_strict(gold, guess):
    assert_same_as_seqeval([gold.split()], [guess.split()], "bioes")


def test_detect_scheme_agrees_with_seqevals_auto_detect():
    """Every set of prefixes: ours says bio where seqeval says IOB2, bioes where it says IOBES, else none;
    except I-only tags (IOB1, which conlleval reads: bio) and S-only tags (BIOES; seqeval's list lacks it)."""
    for n in range(1, 6):
        for prefixes in itertools.combinations("OBIES", n):
            tags = [p if p == "O" else f"{p}-X" for p in prefixes]
            try:
                theirs = {IOB2: "bio", IOBES: "bioes"}.get(auto_detect([tags]), "none")
            except ValueError:  # a mixture seqeval knows no scheme for
                theirs = "none"
            expected = {"I": "bio", "IO": "bio", "OS": "bioes"}.get("".join(sorted(prefixes)), theirs)
            assert detect_scheme(tags) == expected, prefixes
