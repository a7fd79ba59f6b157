"""Seq2seq tasks: synthetic data, the cmudict reader and split, edit distance and the decoding metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from lstm_train.config import ConfigError
from lstm_train.models import build_model
from lstm_train.tasks import build_task
from lstm_train.tasks.data import length_batches
from lstm_train.tasks.g2p import read_cmudict
from lstm_train.tasks.seq2seq import EOS, PAD, Seq2SeqMetrics, Seq2SeqOutput, edit_distance, make_batch, transduce
from lstm_train.train import train
from tests.helpers import CMUDICT, events, without_time

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("kitten", "sitting", 3),
        ("", "abc", 3),
        ("abc", "", 3),
        ("", "", 0),
        ("abc", "abc", 0),
        ("ab", "ba", 2),
        ("flaw", "lawn", 2),
        ("intention", "execution", 5),
        (("K", "AE", "T"), ("K", "AA", "T", "S"), 2),
    ],
)
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance == edit_distance(b, a)


def test_metrics_on_decoded_outputs_by_hand():
    # three sources; the second has two acceptable outputs
    batch = make_batch(
        [[4], [4], [4]], [[5, 6, 7], [5, 6], [7, 7, 7, 7]], refs=[[(5, 6, 7)], [(5, 6), (8, 6, 6)], [(7, 7, 7, 7)]]
    )
    decoded = [(5, 6, 7), (8, 6, 6), (7, 9)]
    metrics = Seq2SeqMetrics(per=True)
    logits = torch.zeros(3, batch.y.shape[1], 10)
    metrics.update(Seq2SeqOutput(logits, decoded), batch, torch.tensor(2.0))
    result = metrics.compute()
    assert result["loss"] == pytest.approx(2.0)
    # acc against the first reference, over the longer length: 3/3, then (8,6,6) vs (5,6): 1 of 3, then 1 of 4
    assert result["acc"] == pytest.approx(5 / 10)
    assert result["exact"] == pytest.approx(2 / 3)  # the second matches its alternate
    # per: 0 edits / 3, closest alternate: 0 edits / 3, (7,9) vs (7,7,7,7): 3 edits / 4
    assert result["per"] == pytest.approx(3 / 10)
    training = Seq2SeqMetrics()
    training.update(logits, batch, torch.tensor(1.0))
    assert training.compute() == {"loss": pytest.approx(1.0)}  # teacher-forced logits: no decoding metrics


@pytest.mark.parametrize(("name", "op"), [("reverse", lambda s: s[::-1]), ("sort", sorted), ("copy", list)])
def test_synthetic_tasks(compose_cfg, name, op):
    cfg = compose_cfg(
        "model=seq2seq",
        f"task={name}",
        "task.vocab_size=7",
        "task.min_len=2",
        "task.seq_len=5",
        "task.val_size=50",
        "task.test_size=50",
        "task.train_size=100",
    )
    task = build_task(cfg.task)
    assert task.inputs.vocab_size == task.num_outputs == 7 + 4
    sources, targets, _ = task.data["val"]
    assert {len(s) for s in sources} == {2, 3, 4, 5} and all(4 <= i < 11 for s in sources for i in s)
    assert targets == [list(op(s)) for s in sources]
    assert sources == build_task(cfg.task).data["val"][0]  # fixed by data_seed
    first = list(task.train_batches(0, 32, seed=1))
    assert [len(b) for b in first] == [32, 32, 32, 4] == [len(b) for b in task.train_batches(0, 32, seed=1)]
    assert torch.equal(first[0].x, next(task.train_batches(0, 32, seed=1)).x)
    assert not torch.equal(first[0].x, next(task.train_batches(1, 32, seed=1)).x)
    b = first[0]
    for row, y, n in zip(b.x.tolist(), b.y.tolist(), b.lengths.tolist(), strict=True):
        assert row[n:] == [PAD] * (len(row) - n)
        assert y[: n + 1] == [*op(row[:n]), EOS] and y[n + 1 :] == [PAD] * (len(y) - n - 1)


def write(tmp_path, text, name="dict.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_cmudict_reader(tmp_path):
    path = write(tmp_path, CMUDICT)
    words = read_cmudict(path, stress=True)
    assert words["'bout"] == [("B", "AW1", "T")]
    assert words["a"] == [("AH0",), ("EY1",)]
    assert words["record"] == [
        ("R", "EH1", "K", "ER0", "D"),
        ("R", "IH0", "K", "AO1", "R", "D"),
        ("R", "EH1", "K", "ER2", "D"),
    ]
    assert words["cat"] == [("K", "AE1", "T")]
    assert "a.m." not in words and "x-ray" not in words  # punctuation other than apostrophes: left out
    stripped = read_cmudict(path)
    assert stripped["record"] == [("R", "EH", "K", "ER", "D"), ("R", "IH", "K", "AO", "R", "D")]  # 1 and 3 merge
    assert len(stripped) == len(words) == 4 + 300


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("lonely", r"3: expected 'word PH1 PH2 \.\.\.'"),
        ("dog D ao1 G", r"3: 'ao1' is not a phoneme"),
        ("dog D AO7 G", r"3: 'AO7' is not a phoneme"),
    ],
)
def test_cmudict_reader_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, f"cat K AE1 T\n\n{line}\n")
    with pytest.raises(ConfigError, match=rf"^task.path: .*dict.txt:{message}"):
        read_cmudict(path)
    with pytest.raises(ConfigError, match=r"^task.path: .* has no entries"):
        read_cmudict(write(tmp_path, "a.m. EY2 EH1 M\n", "odd.txt"))
    with pytest.raises(ConfigError, match=r"^task.path: no file at"):
        read_cmudict(tmp_path / "missing.txt")


def g2p_cfg(compose_cfg, path, *overrides):
    return compose_cfg(
        "model=seq2seq",
        "task=g2p",
        f"task.path={path}",
        "task.val_fraction=0.2",
        "task.test_fraction=0.2",
        "task.val_size=null",
        *overrides,
    )


def test_g2p_split_by_word_without_leakage(compose_cfg, tmp_path):
    path = write(tmp_path, CMUDICT)
    task = build_task(g2p_cfg(compose_cfg, path).task)
    words = {split: {"".join(task.source_vocab.decode(s)) for s in task.data[split][0]} for split in task.data}
    assert not (words["train"] & words["val"] or words["train"] & words["test"] or words["val"] & words["test"])
    assert sum(len(w) for w in words.values()) == 304
    assert 30 < len(words["val"]) < 90 and 30 < len(words["test"]) < 90
    again = build_task(g2p_cfg(compose_cfg, path).task)
    assert again.data["val"][0] == task.data["val"][0]
    other = build_task(g2p_cfg(compose_cfg, path, "task.data_seed=7").task)
    assert other.data["val"][0] != task.data["val"][0]
    # every pronunciation of a word is in the word's split: as references in val/test, as examples in train
    everything = build_task(g2p_cfg(compose_cfg, path, "task.train_alternates=all").task)
    for word, prons in (
        ("record", [["R", "EH", "K", "ER", "D"], ["R", "IH", "K", "AO", "R", "D"]]),
        ("a", [["AH"], ["EY"]]),
    ):
        split = next(s for s in words if word in words[s])
        if split == "train":
            sources, targets, _ = everything.data["train"]
            assert [
                task.target_vocab.decode(t)
                for s, t in zip(sources, targets, strict=True)
                if task.source_vocab.decode(s) == list(word)
            ] == prons
        else:
            sources, targets, refs = task.data[split]
            i = ["".join(task.source_vocab.decode(s)) for s in sources].index(word)
            assert [task.target_vocab.decode(r) for r in refs[i]] == prons and targets[i] == list(refs[i][0])


def test_g2p_train_alternates_and_sizes(compose_cfg, tmp_path):
    path = write(tmp_path, CMUDICT)
    first = build_task(g2p_cfg(compose_cfg, path, "task.data_seed=3").task)
    every = build_task(g2p_cfg(compose_cfg, path, "task.data_seed=3", "task.train_alternates=all").task)
    train_words = {"".join(first.source_vocab.decode(s)) for s in first.data["train"][0]}
    extra = sum(w in train_words for w in ("a", "record"))
    assert len(every.data["train"][0]) == len(first.data["train"][0]) + extra
    small = build_task(g2p_cfg(compose_cfg, path, "task.train_size=10", "task.seq_len=4").task)
    assert len(small.data["train"][0]) == 10 and all(len(s) <= 4 for s in small.data["train"][0])
    with pytest.raises(ConfigError, match=r"^task.path: .*: no word falls in the val split"):
        build_task(g2p_cfg(compose_cfg, path, "task.seq_len=1").task)


def test_length_batches_keep_the_epoch_and_cut_the_padding():
    lengths = torch.randint(1, 30, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = length_batches(lengths, 32, torch.Generator().manual_seed(1), pool=8)
    assert sorted(i for b in batches for i in b) == list(range(1000))  # every example once
    assert len(batches) == math.ceil(1000 / 32) and sum(len(b) < 32 for b in batches) == 1
    assert batches == length_batches(lengths, 32, torch.Generator().manual_seed(1), pool=8)  # a resume replays it
    assert batches != length_batches(lengths, 32, torch.Generator().manual_seed(2), pool=8)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.2 * sum(lengths)  # random batches of 32 from 1..29 would pad about 1.8x


def test_g2p_batches_by_length(compose_cfg, tmp_path):
    text = "".join(f"{'ab' * (1 + i % 9)}{chr(97 + i % 26)}{chr(97 + i // 26)} K AE T\n" for i in range(400))
    path = write(tmp_path, text)
    by_length = build_task(g2p_cfg(compose_cfg, path).task)
    random = build_task(g2p_cfg(compose_cfg, path, "task.by_length=false").task)
    assert by_length.by_length and not random.by_length
    epochs = {}
    for name, task in (("by_length", by_length), ("random", random)):
        batches = list(task.train_batches(0, 16, seed=0))
        assert len(batches) == task.steps_per_epoch(16)
        words = sorted("".join(task.source_vocab.decode(x[x != PAD])) for b in batches for x in b.x)
        epochs[name] = (words, sum(b.x.numel() for b in batches))
    assert epochs["by_length"][0] == epochs["random"][0]  # the same words in an epoch
    assert epochs["by_length"][1] < 0.8 * epochs["random"][1]  # in fewer padded cells


def test_g2p_predicts_from_checkpoint_state(compose_cfg, tmp_path):
    cfg = g2p_cfg(compose_cfg, write(tmp_path, CMUDICT), "model.hidden_size=8", "model.embedding_dim=4")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    restored = type(task)(cfg.task, state=json.loads(json.dumps(task.state_dict())))
    assert restored.source_vocab.tokens == task.source_vocab.tokens and not restored.data
    out = list(transduce(model, restored, ["Cat", "zzz", ""]))
    assert out == list(transduce(model, task, ["cat", "zzz", ""]))
    assert out[2] == "" and all(set(o.split()) <= set(task.target_vocab.tokens) for o in out)


def test_a_run_writes_decoding_metrics(seq2seq_run):
    metrics = json.loads((seq2seq_run.dir / "metrics.json").read_text())
    names = {"loss", "acc", "exact"} | ({"per"} if seq2seq_run.cfg.task.name == "g2p" else set())
    assert set(metrics["test"]) == set(metrics["val"]) == names
    assert set(metrics["train"]) == {"loss"}  # training is teacher-forced: no decoding metrics there
    assert metrics["test"] == seq2seq_run.metrics["test"] and 0 <= metrics["test"]["acc"] <= 1
    assert "samples/text_summary" in events(seq2seq_run.dir).Tags()["tensors"]


def test_synthetic_config_checked_at_build(compose_cfg):
    cfg = compose_cfg("model=seq2seq", "task=copy")
    with pytest.raises(ConfigError, match=r"^task.min_len"):
        build_task(OmegaConf.merge(cfg.task, {"min_len": 50}))


def test_resume_with_a_teacher_forcing_coin_ends_like_an_uninterrupted_run(compose_cfg, tmp_path,
                                                                         killed_after_first_checkpoint):
    overrides = (
        "model=seq2seq",
        "task=reverse",
        "debug=fast",
        "model.teacher_forcing_ratio=0.5",
        "trainer.eval_every_n_steps=3",
        "trainer.progress_bar=false",
    )
    uninterrupted = train(compose_cfg(*overrides), tmp_path / "a")
    killed_after_first_checkpoint(compose_cfg(*overrides), tmp_path / "b")
    resumed = train(compose_cfg(*overrides, f"trainer.resume={tmp_path / 'b/checkpoints/last.pt'}"), tmp_path / "c")
    assert without_time(resumed) == without_time(uninterrupted)
