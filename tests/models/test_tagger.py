"""model=tagger: padded batches tag each sentence as it would be alone, learning a tiny set by heart, and the
character-aware tagger (padding invariance, unknown words tagged by their spelling)."""

from __future__ import annotations

import random

import pytest
import torch

from lstm_train.models import build_model
from lstm_train.tasks import build_task
from lstm_train.tasks.tagging import pad_tagged
from tests.helpers import fit, tag_synthetic_cfg, write_random_conll

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("backend", ["fast", "reference", "torch"])
def test_padded_batch_gives_each_sentence_its_own_tags(compose_cfg, backend):
    cfg = tag_synthetic_cfg(compose_cfg, f"model.backend={backend}", "model.num_layers=2", "model.bidirectional=true")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task).eval()
    sentences = task.data["val"][:6]
    batch = pad_tagged(sentences)
    assert batch.lengths.min() < batch.x.shape[1]  # the batch really is padded
    with torch.no_grad():
        together = model(batch.x, batch.lengths)
        for i, (x, _, _) in enumerate(sentences):
            alone = model(x[None])[0]
            torch.testing.assert_close(together[i, : len(x)], alone, atol=1e-5, rtol=1e-5)




def test_tagger_overfits_a_tiny_set(compose_cfg, tmp_path):
    data = write_random_conll(tmp_path / "tiny.txt")
    cfg = compose_cfg(
        "model=tagger",
        "task=conll",
        f"task.train={data}",
        f"task.val={data}",
        "model.hidden_size=32",
        "model.embedding_dim=16",
    )
    task = build_task(cfg.task)
    assert task.scheme == "bio" and task.metric_names[-1] == "f1"
    assert len(task.data["train"]) == 20
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    (batch,) = task.train_batches(0, 32, seed=0)
    fit(model, task, [batch] * 150, lr=0.02)
    model.eval()
    metrics = task.new_metrics()
    with torch.no_grad():
        for b in task.eval_batches("val", 7):
            output = model(b.x, b.lengths)
            metrics.update(output, b, task.loss(output, b))
    result = metrics.compute()
    assert result["acc"] == 1.0 and result["f1"] == 1.0




def suffix_data(path, n, seed):
    """Sentences of made-up words whose tag is their ending (-ing: V, -ed: D, -ly: R, else N)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        for _ in range(rng.randint(3, 7)):
            stem = "".join(rng.choice("bcdfgkmnprst") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
            ending, tag = rng.choice([("ing", "V"), ("ed", "D"), ("ly", "R"), ("", "N")])
            lines.append(f"{stem}{ending} {tag}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path




@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_character_aware_tagger_is_padding_invariant(compose_cfg, backend):
    cfg = tag_synthetic_cfg(compose_cfg, f"model.backend={backend}", "model.char_dim=5", "model.char_hidden=4",
                            "task.vocab_size=200")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task).eval()
    sentences = task.data["val"][:6]
    batch = pad_tagged(sentences)
    with torch.no_grad():
        together = task.forward(model, batch)
        for i, sentence in enumerate(sentences):
            alone = task.forward(model, pad_tagged([sentence]))[0]
            torch.testing.assert_close(together[i, : len(sentence[0])], alone, atol=1e-5, rtol=1e-5)


def test_character_aware_tagger_tags_unknown_words_by_their_spelling(compose_cfg, tmp_path):
    train, test = suffix_data(tmp_path / "train.txt", 60, 0), suffix_data(tmp_path / "test.txt", 30, 1)
    accuracy = {}
    for char_dim in (0, 8):
        cfg = compose_cfg("model=tagger", "task=conll", f"task.train={train}", f"task.val={test}",
                          "model.hidden_size=16", "model.embedding_dim=8", f"model.char_dim={char_dim}",
                          "model.char_hidden=16")
        task = build_task(cfg.task)
        torch.manual_seed(0)
        model = build_model(cfg.model, task)
        fit(model, task, (batch for epoch in range(6) for batch in task.train_batches(epoch, 32, seed=0)), lr=0.03)
        metrics = task.new_metrics()
        with torch.no_grad():
            for b in task.eval_batches("test", 64):
                output = task.forward(model.eval(), b)
                metrics.update(output, b, task.loss(output, b))
        accuracy[char_dim] = metrics.compute()
    assert accuracy[0]["unk_acc"] < 0.6  # words only: every unseen word is <unk>, one tag for all
    assert accuracy[8]["unk_acc"] > 0.95 and accuracy[8]["acc"] > 0.95  # four tags by ending
