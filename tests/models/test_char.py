"""model=char: tied weights, learning a tiny text by heart, seeded sampling with temperature and top-k, and a
prompt fed once then one step per character. (The text_char task is in tests/tasks/test_text_char.py.)"""

from __future__ import annotations

import pytest
import torch

from lstm_train.config import ConfigError, validate
from lstm_train.models import build_model
from lstm_train.tasks import build_task
from tests.helpers import char_cfg, memorise, tiny_model


def test_tied_weights_need_equal_sizes(compose_cfg, text_file):
    cfg = compose_cfg("task=text_char", "model=char", f"task.path={text_file}", "model.tie_weights=true")
    with pytest.raises(ConfigError, match=r"^model\.tie_weights: needs model\.hidden_size == model\.embedding_dim"):
        validate(cfg)


def test_tied_weights_share_the_embedding(compose_cfg, text_file):
    cfg = char_cfg(compose_cfg, text_file, "model.tie_weights=true", "model.embedding_dim=16")
    model = build_model(cfg.model, build_task(cfg.task))
    assert model.head.weight is model.encoder.embedding.weight


def test_overfits_a_tiny_text(compose_cfg, text_file, one_thread):
    model, task = tiny_model(compose_cfg, text_file, "model.hidden_size=64", "model.num_layers=1", "task.seq_len=48")
    ids = task.ids["train"][:49].view(1, -1)  # one line of the text and the start of the next
    assert memorise(model, ids) < 0.05
    # and greedy decoding reproduces the memorised line from its first character
    assert task.vocab.decode(model.generate(ids[0, :1], 20, temperature=0)) == task.vocab.decode(ids[0, 1:21])


def test_sampling_is_seeded_and_greedy(compose_cfg, text_file):
    model, task = tiny_model(compose_cfg, text_file)
    prompt = task.vocab.encode_text("the ")

    def sample(seed, **kw):
        return model.generate(prompt, 30, generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(1) == sample(1) and sample(1) != sample(2)
    assert sample(1, top_k=1) == sample(2, top_k=1) == sample(3, temperature=0)  # top-1 and greedy agree
    logits, _ = model.eval().step(prompt.view(1, -1))  # eval: no dropout, as in generate
    assert sample(5, temperature=0)[0] == int(logits[0, -1].argmax())
    assert set(sample(4, top_k=3)) <= set(range(task.num_outputs))


@pytest.mark.parametrize(("kw", "message"), [({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k")],
                         ids=["temperature", "top_k"])
def test_sampling_options_are_validated(compose_cfg, text_file, kw, message):
    model, task = tiny_model(compose_cfg, text_file)
    with pytest.raises(ValueError, match=message):
        model.generate(task.vocab.encode_text("the "), 30, generator=torch.Generator().manual_seed(0), **kw)


def test_an_empty_prompt_is_refused(compose_cfg, text_file):
    model, _ = tiny_model(compose_cfg, text_file)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate([], 3)


def test_prompt_is_fed_once_then_one_step_per_character(compose_cfg, text_file, monkeypatch):
    model, task = tiny_model(compose_cfg, text_file)
    model.eval()
    prompt = task.vocab.encode_text("the cat ")
    calls = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda x, state=None, lengths=None: calls.append((x.shape[1], state)) or step(
        x, state, lengths))
    out = model.generate(prompt, 6, generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in calls] == [len(prompt), 1, 1, 1, 1, 1]  # 6 characters: the prompt once, 5 steps
    assert calls[0][1] is None
    # The carried state equals a full forward over prompt + the first 5 sampled characters.
    _, (h, c) = step(torch.cat([prompt, torch.tensor(out[:5])]).view(1, -1))
    _, (h_steps, c_steps) = step(torch.tensor([[out[4]]]), calls[-1][1])
    torch.testing.assert_close(h_steps, h)
    torch.testing.assert_close(c_steps, c)
