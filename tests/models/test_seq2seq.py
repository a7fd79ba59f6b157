"""The encoder-decoder: padding, teacher forcing, greedy and beam decoding, attention masks, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lstm_train.config import ConfigError, validate
from lstm_train.models import build_model
from lstm_train.models.seq2seq import Memory, Seq2Seq
from lstm_train.tasks import build_task
from lstm_train.tasks.seq2seq import EOS, PAD, make_batch, strip, transduce
from tests.helpers import fit

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model=seq2seq",
    "task=reverse",
    "model.hidden_size=12",
    "model.embedding_dim=8",
    "task.vocab_size=6",
    "task.val_size=16",
    "task.test_size=16",
]


@pytest.fixture
def make(compose_cfg):
    """make("model.attention=true", ...) -> (model in eval mode, task), tiny, seeded."""

    def build(*overrides):
        cfg = compose_cfg(*TINY, *overrides)
        validate(cfg)
        task = build_task(cfg.task)
        torch.manual_seed(0)
        return build_model(cfg.model, task).eval(), task

    return build


SOURCES = [[4, 5, 6, 7, 8, 9], [5, 4], [9, 8, 7], [6]]


def one_by_one(fn, sources):
    return [fn(make_batch([s], [s])) for s in sources]


SHAPES = pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.attention=true"],
        ["model.bidirectional=true"],
        ["model.bidirectional=true", "model.attention=true", "model.num_layers=1"],
    ],
    ids=["plain", "attention", "bidirectional", "bidirectional-attention"],
)


@SHAPES
def test_padded_and_unpadded_batches_agree(make, overrides):
    model, _ = make(*overrides)
    batch = make_batch(SOURCES, SOURCES)
    with torch.no_grad():
        logits = model(batch.x, batch.lengths, batch.y)
        alone = one_by_one(lambda b: model(b.x, b.lengths, b.y)[0], SOURCES)
    for i, s in enumerate(SOURCES):  # targets are padded too: the steps up to each one's EOS must agree
        torch.testing.assert_close(logits[i, : len(s) + 1], alone[i], rtol=1e-5, atol=1e-6)


@SHAPES
@pytest.mark.parametrize("k", [1, 3], ids=["greedy", "beam3"])
def test_padded_and_unpadded_batches_decode_alike(make, overrides, k):
    model, _ = make(*overrides)
    batch = make_batch(SOURCES, SOURCES)
    with torch.no_grad():
        tokens, scores = model.decode(batch.x, batch.lengths, beam_size=k)
        singles = one_by_one(lambda b: model.decode(b.x, b.lengths, beam_size=k), SOURCES)
    assert strip(tokens) == [strip(t)[0] for t, _ in singles]
    torch.testing.assert_close(scores, torch.cat([s for _, s in singles]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [["model.attention=true"], ["model.attention=true", "model.bidirectional=true"]])
def test_attention_ignores_padded_source_positions(make, overrides):
    model, _ = make(*overrides)
    batch = make_batch(SOURCES, SOURCES)
    noisy = batch.x.clone()
    pad = torch.arange(batch.x.shape[1]) >= batch.lengths[:, None]
    noisy[pad] = torch.randint(4, 10, (int(pad.sum()),), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(noisy, batch.x)
    with torch.no_grad():
        torch.testing.assert_close(
            model(noisy, batch.lengths, batch.y), model(batch.x, batch.lengths, batch.y), rtol=0, atol=0
        )
        memory, _ = model.encode(batch.x, batch.lengths)
        query = torch.randn(len(SOURCES), 3, 12)
        weights = model.attention(query, memory)[1]
        assert torch.all(weights[pad[:, None, :].expand_as(weights)] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(SOURCES), 3))
    for k in (1, 4):
        assert torch.equal(
            model.decode(noisy, batch.lengths, beam_size=k)[0], model.decode(batch.x, batch.lengths, beam_size=k)[0]
        )


def test_bidirectional_bridge_gives_the_decoder_its_own_size(make):
    model, _ = make("model.bidirectional=true", "model.num_layers=3")
    batch = make_batch(SOURCES, SOURCES)
    memory, (h, c) = model.encode(batch.x, batch.lengths)
    assert h.shape == c.shape == (3, len(SOURCES), 12)  # decoder layers, batch, decoder hidden
    assert memory.outputs.shape == (len(SOURCES), 6, 24)  # both directions, for attention
    assert torch.all(h.abs() < 1)  # tanh on h; c is a plain linear map
    assert len(model.bridge_h) == len(model.bridge_c) == 3 and model.bridge_h[0].in_features == 24


@pytest.mark.parametrize("overrides", [[], ["model.attention=true", "model.bidirectional=true"]])
def test_beam_size_one_is_greedy_and_beam_scores_are_log_probs(make, overrides):
    model, _ = make(*overrides)
    torch.manual_seed(3)
    with torch.no_grad():  # a random model: sharper outputs than at init, so decodes are not all alike
        for p in model.head.parameters():
            p.mul_(8)
    src = torch.randint(4, 10, (20, 7))
    lengths = torch.randint(1, 8, (20,))
    greedy = model.greedy(src, lengths)
    beam1 = model.beam_search(src, lengths, 1)
    assert torch.equal(greedy[0], beam1[0]) and torch.equal(greedy[1], beam1[1])
    tokens, scores = model.beam_search(src, lengths, 5)
    # the returned score is the model's log-probability of the returned sequence (EOS included if there)
    with torch.no_grad():
        logp = F.log_softmax(model(src, lengths, tokens), -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(logp.masked_fill(tokens == PAD, 0).sum(1), scores, rtol=1e-4, atol=1e-4)
    assert torch.all(scores >= greedy[1] - 1e-5)  # here beam search never does worse than greedy


class TableModel(Seq2Seq):
    """A Seq2Seq whose next-token distribution is a fixed table of the previous token: known answers."""

    def __init__(self, base: Seq2Seq, table: dict[int, dict[int, float]]) -> None:
        self.__dict__.update(base.__dict__)
        V = base.head.out_features
        self.table = torch.full((V, V), 1e-9)
        for prev, nexts in table.items():
            for tok, p in nexts.items():
                self.table[prev, tok] = p

    def encode(self, src, lengths):
        B = src.shape[0]
        return Memory(torch.zeros(B, 1, 1), None, torch.ones(B, 1, dtype=torch.bool)), (
            torch.zeros(1, B, 1),
            torch.zeros(1, B, 1),
        )

    def step(self, tokens, state, memory):
        return self.table[tokens].log(), state


A, B = 4, 5


def test_beam_search_finds_a_better_sequence_than_greedy(make):
    base, _ = make()
    # greedy takes A (0.6), then meets a flat distribution; B (0.4) then EOS (0.99) is the likelier sequence
    model = TableModel(base, {1: {A: 0.6, B: 0.4}, A: {A: 0.34, B: 0.33, EOS: 0.33}, B: {EOS: 0.99, A: 0.01}})
    src, lengths = torch.full((1, 3), 4), torch.tensor([3])
    greedy_tokens, greedy_score = model.greedy(src, lengths)
    beam_tokens, beam_score = model.beam_search(src, lengths, 2)
    assert strip(greedy_tokens)[0][:2] == (A, A)
    assert beam_tokens.tolist() == [[B, EOS]]
    assert beam_score.item() == pytest.approx(float(torch.tensor(0.4).log() + torch.tensor(0.99).log()), abs=1e-6)
    assert beam_score.item() > greedy_score.item()


@pytest.mark.parametrize("k", [1, 3], ids=["greedy", "beam3"])
def test_the_length_limit_holds(make, k):
    base, _ = make("model.max_length_ratio=1.5", "model.max_length_offset=2")
    lengths = torch.tensor([4, 1, 2])
    limits = [int(1.5 * n + 2) for n in lengths.tolist()]  # 8, 3, 5
    never_ends = TableModel(base, {1: {A: 0.9, EOS: 0.1}, A: {A: 0.9, EOS: 0.1}})
    tokens, _ = never_ends.decode(torch.full((3, 4), 4), lengths, beam_size=k)
    assert tokens.shape[1] == max(limits)
    assert [int((row != PAD).sum()) for row in tokens] == limits
    assert not torch.any(tokens == EOS)


@pytest.mark.parametrize("k", [1, 3], ids=["greedy", "beam3"])
def test_eos_stops_decoding(make, k):
    base, _ = make("model.max_length_ratio=1.5", "model.max_length_offset=2")
    ends = TableModel(base, {1: {A: 0.9, EOS: 0.1}, A: {EOS: 0.9, A: 0.1}})
    tokens, _ = ends.decode(torch.full((3, 4), 4), torch.tensor([4, 1, 2]), beam_size=k)
    assert tokens.tolist() == [[A, EOS]] * 3  # stops as soon as every sequence has ended


def test_teacher_forcing_ratio_zero_feeds_the_models_own_outputs(make):
    model, _ = make()
    model.train()
    batch = make_batch(SOURCES, SOURCES)
    other = batch.y.clone()
    other[batch.y > EOS] = 4 + (batch.y[batch.y > EOS] - 3) % 6
    model.teacher_forcing_ratio = 0.0
    torch.testing.assert_close(model(batch.x, batch.lengths, batch.y), model(batch.x, batch.lengths, other))
    model.teacher_forcing_ratio = 1.0
    assert not torch.allclose(model(batch.x, batch.lengths, batch.y), model(batch.x, batch.lengths, other))


@pytest.mark.parametrize("attention", ["true", "false"])
def test_output_dropout_reaches_both_lstms_in_training_only(make, attention):
    plain, _ = make(f"model.attention={attention}", "model.num_layers=1", "model.bidirectional=true")
    model, _ = make(f"model.attention={attention}", "model.num_layers=1", "model.bidirectional=true",
                    "model.output_dropout=0.5")
    model.load_state_dict(plain.state_dict())  # the same weights: dropout adds no parameter
    batch = make_batch(SOURCES, SOURCES)
    with torch.no_grad():  # evaluation and decoding: no dropout
        torch.testing.assert_close(model(batch.x, batch.lengths, batch.y), plain(batch.x, batch.lengths, batch.y))
        assert torch.equal(model.decode(batch.x, batch.lengths, 3)[0], plain.decode(batch.x, batch.lengths, 3)[0])
        model.train()
        memory, _ = model.encode(batch.x, batch.lengths)
        dropped = memory.outputs[memory.mask]
        assert 0.3 < (dropped == 0).float().mean() < 0.7  # the encoder's outputs, whether attention reads them
        out, _ = model.decoder(model.embedding(batch.y), model.encode(batch.x, batch.lengths)[1])
        drops = [(model._logits(out, memory) - plain._logits(out, memory)).abs().amax() for _ in range(2)]
        assert min(drops) > 0  # the decoder's outputs, before attention and the output layer


def test_overfits_a_tiny_reverse_set(compose_cfg):
    cfg = compose_cfg(
        "model=seq2seq",
        "task=reverse",
        "model.hidden_size=48",
        "model.embedding_dim=16",
        "model.num_layers=1",
        "task.vocab_size=5",
        "task.min_len=2",
        "task.seq_len=4",
    )
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    batch = next(task.train_batches(0, 32, seed=0))
    fit(model, task, [batch] * 150, lr=0.02)
    model.eval()
    metrics = task.new_metrics()
    with torch.no_grad():
        output = task.forward(model, batch)
        metrics.update(output, batch, task.loss(output, batch))
    result = metrics.compute()
    assert result["exact"] == 1.0 and result["acc"] == 1.0, result


def test_transduce_and_samples(make):
    model, task = make("task.num_samples=3")
    lines = ["4 5 1", "", "2 2 3 0 1", "9 9"]  # "9" is not a symbol of a 6-symbol task: <unk>
    rng = torch.get_rng_state()
    out = list(transduce(model, task, lines, batch_size=2))
    assert len(out) == 4 and out[1] == ""
    ids = [task.source_vocab.encode(line.split()) for line in lines if line]
    batch = make_batch(ids, ids)
    expected = [" ".join(task.target_vocab.decode(s)) for s in strip(model.decode(batch.x, batch.lengths)[0])]
    assert [out[0], out[2], out[3]] == expected
    table = task.samples(model)["samples"]
    assert table.count("\n") == 4 and "| source | reference | decoded | exact |" in table
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training


def test_config_errors(compose_cfg):
    with pytest.raises(ConfigError, match=r"^task.min_len: must be <= task.seq_len"):
        validate(compose_cfg(*TINY, "task.min_len=9", "task.seq_len=4"))
    with pytest.raises(ConfigError, match=r"^model.max_length_offset: "):
        validate(compose_cfg(*TINY, "model.max_length_ratio=0", "model.max_length_offset=0"))
    cfg = compose_cfg(*TINY)
    task = build_task(cfg.task)
    with pytest.raises(ConfigError, match=r"^model.cell: seq2seq .* needs cell=lstm"):
        build_model(OmegaConf.merge(cfg.model, {"cell": "gru"}), task)
    model = build_model(cfg.model, task)
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        model.decode(torch.full((1, 2), 4), beam_size=0)
