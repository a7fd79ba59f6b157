"""Our LSTM against torch.nn.LSTM: values, gradients, padding, dropout, initialisation, gates, errors."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_train.nn import BACKENDS, LSTM, LSTMCell, TorchLSTM, build_lstm, compiled, lstm_cell
from lstm_train.nn.lstm import LAYERS
from tests import ROOT
from tests.helpers import assert_parity, grads, run_torch, twins
from tests.paths import FAST_PATHS, PATHS

TOL = {"atol": 1e-9, "rtol": 0}


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("lengths", [None, [5, 1, 7, 3, 1]], ids=["full", "padded"])
def test_parity_with_torch(backend, num_layers, bidirectional, batch_first, with_state, lengths):
    torch.manual_seed(0)
    theirs, ours = twins(backend, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    T, B, D = 7, 5, 2 if bidirectional else 1
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), dtype=torch.double, requires_grad=True)
    hx = None
    if with_state:
        hx = tuple(torch.randn(num_layers * D, B, 4, dtype=torch.double, requires_grad=True) for _ in range(2))
    assert_parity(theirs, ours, x, hx, lengths)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("used", ["output", "h_n", "c_n"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 1, 4]], ids=["full", "padded"])
def test_gradients_when_only_one_output_is_used(backend, used, lengths):
    """A classifier reads h_n only, a tagger the output only: the unused outputs get no gradient at all."""
    torch.manual_seed(16)
    theirs, ours = twins(backend, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=torch.double, requires_grad=True)
    pick = {"output": lambda r: r[0], "h_n": lambda r: r[1][0], "c_n": lambda r: r[1][1]}[used]
    expected = grads((pick(run_torch(theirs, x, None, lengths)),), [x, *theirs.parameters()])
    actual = grads((pick(ours(x, lengths=lengths)),), [x, *ours.parameters()])
    for a, b in zip(expected, actual, strict=True):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_padding_shorter_than_tensor_and_padding_values_ignored(backend):
    """All sequences shorter than the padded length; garbage in the padding changes nothing."""
    torch.manual_seed(1)
    theirs, ours = twins(backend, num_layers=2, bidirectional=True)
    x = torch.randn(9, 4, 3, dtype=torch.double)
    lengths = [2, 6, 1, 6]
    noisy = x.clone()
    for b, n in enumerate(lengths):
        noisy[n:, b] = 1e3
    out, (h, c) = ours(noisy, lengths=lengths)
    assert out.shape == (9, 4, 8)
    assert torch.all(out[6:] == 0) and torch.all(out[2:, 2] == 0)
    ref, (h_ref, c_ref) = run_torch(theirs, x, None, lengths)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)
    torch.testing.assert_close(c, c_ref, **TOL)
    assert_parity(theirs, ours, noisy.requires_grad_(), None, lengths)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence_input(backend, enforce_sorted):
    torch.manual_seed(2)
    theirs, ours = twins(backend, num_layers=2, bidirectional=True)
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    x = torch.randn(6, 4, 3, dtype=torch.double)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    o1, (h1, c1) = theirs(packed)
    o2, (h2, c2) = ours(packed)
    assert isinstance(o2, type(o1))
    torch.testing.assert_close(o2.data, o1.data, **TOL)
    assert torch.equal(o2.batch_sizes, o1.batch_sizes)
    torch.testing.assert_close(h2, h1, **TOL)
    torch.testing.assert_close(c2, c1, **TOL)
    with pytest.raises(ValueError, match="not both"):
        ours(packed, lengths=lengths)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_unbatched_input(backend):
    torch.manual_seed(3)
    theirs, ours = twins(backend, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, dtype=torch.double)
    o1, (h1, c1) = theirs(x)
    o2, (h2, c2) = ours(x)
    for a, b in ((o1, o2), (h1, h2), (c1, c2)):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_float32_and_no_bias(backend):
    torch.manual_seed(4)
    theirs = torch.nn.LSTM(6, 16, 2, bias=False, bidirectional=True)
    ours = LSTM(6, 16, 2, bias=False, bidirectional=True, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(12, 3, 6)
    o1, (h1, _) = theirs(x)
    o2, (h2, _) = ours(x, lengths=[12, 12, 12])
    torch.testing.assert_close(o2, o1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2, h1, atol=1e-5, rtol=1e-5)
    assert o2.dtype == torch.float32


def test_state_dicts_interchange():
    theirs = torch.nn.LSTM(3, 4, 2, bidirectional=True)
    ours = LSTM(3, 4, 2, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, p in theirs.named_parameters():
        assert getattr(ours, name).shape == p.shape, name
    theirs.load_state_dict(ours.state_dict())
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_gradcheck(backend):
    torch.manual_seed(5)
    lstm = LSTM(2, 3, 2, bidirectional=True, backend=backend).double()
    x = torch.randn(4, 3, 2, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(4, 3, 3, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(4, 3, 3, dtype=torch.double, requires_grad=True)

    def f(x, h0, c0, *params):
        state = dict(zip((n for n, _ in lstm.named_parameters()), params, strict=True))
        out, (h, c) = torch.func.functional_call(lstm, state, (x, (h0, c0)), {"lengths": [4, 1, 3]})
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *lstm.parameters()))


def test_lstm_cell_matches_torch():
    torch.manual_seed(6)
    theirs = torch.nn.LSTMCell(5, 7).double()
    ours = LSTMCell(5, 7).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    state = (torch.randn(3, 7, dtype=torch.double), torch.randn(3, 7, dtype=torch.double))
    for s in (None, state):
        h1, c1 = theirs(x, s)
        h2, c2 = ours(x, s)
        torch.testing.assert_close(h2, h1, **TOL)
        torch.testing.assert_close(c2, c1, **TOL)
        expected, actual = grads((h1, c1), [x, *theirs.parameters()]), grads((h2, c2), [x, *ours.parameters()])
        for a, b in zip(expected, actual, strict=True):
            torch.testing.assert_close(b, a, **TOL)
    h1, c1 = theirs(x[0])  # unbatched
    h2, c2 = ours(x[0])
    torch.testing.assert_close(h2, h1, **TOL)
    assert torch.autograd.gradcheck(lambda x, *s: ours(x, s), (x, *(t.requires_grad_() for t in state)))


def test_lstm_cell_without_bias():
    theirs = torch.nn.LSTMCell(4, 3, bias=False).double()
    ours = LSTMCell(4, 3, bias=False).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, dtype=torch.double)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **TOL)


# Dropout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_dropout_matches_torch_in_training(backend):
    """Same seed, same masks: torch.nn.LSTM drops each layer's output but the last's, and so do we."""
    torch.manual_seed(7)
    theirs, ours = twins(backend, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=torch.double)
    torch.manual_seed(8)
    o1, (h1, _) = theirs(x)
    torch.manual_seed(8)
    o2, (h2, _) = ours(x)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(h2, h1, **TOL)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_dropout_between_layers_only_and_none_in_eval(backend):
    torch.manual_seed(9)
    x = torch.randn(6, 4, 3, dtype=torch.double)
    with pytest.warns(UserWarning, match="between layers"):
        single = LSTM(3, 4, 1, dropout=0.5, backend=backend).double()
    plain = LSTM(3, 4, 1, backend=backend).double()
    plain.load_state_dict(single.state_dict())
    torch.testing.assert_close(single.train()(x)[0], plain(x)[0], **TOL)  # never on the last layer's output

    stacked = LSTM(3, 4, 2, dropout=0.5, backend=backend).double()
    no_drop = LSTM(3, 4, 2, backend=backend).double()
    no_drop.load_state_dict(stacked.state_dict())
    assert not torch.allclose(stacked.train()(x)[0], no_drop(x)[0])  # between layers in training
    stacked.eval()
    first, second = stacked(x)[0], stacked(x)[0]
    assert torch.equal(first, second)  # deterministic in eval
    torch.testing.assert_close(first, no_drop(x)[0], **TOL)


# Initialisation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda **k: LSTM(**k), lambda **k: TorchLSTM(**k)], ids=["ours", "torch"])
@pytest.mark.parametrize("forget_bias", [1.0, 0.5])
def test_initialisation(make, forget_bias):
    torch.manual_seed(10)
    lstm = make(input_size=300, hidden_size=200, num_layers=2, forget_bias=forget_bias)
    H = 200
    for layer in range(2):
        fan_in = 300 if layer == 0 else H
        for kind, fan in (("ih", fan_in), ("hh", H)):
            w = getattr(lstm, f"weight_{kind}_l{layer}").detach()
            bound = math.sqrt(6 / (fan + H))  # Xavier-uniform for each gate's (H, fan) block
            for block in w.split(H):
                assert block.abs().max() <= bound
                assert block.abs().max() > 0.98 * bound
                assert abs(block.std().item() - bound / math.sqrt(3)) < 0.02 * bound
                assert abs(block.mean().item()) < 0.01 * bound
        b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}").detach(), getattr(lstm, f"bias_hh_l{layer}").detach()
        effective = (b_ih + b_hh).split(H)
        assert torch.all(effective[1] == forget_bias)  # the forget gate: exactly forget_bias, not twice
        for gate in (0, 2, 3):
            assert torch.all(effective[gate] == 0)


def test_cell_initialisation_and_reset():
    cell = LSTMCell(10, 8, forget_bias=2.0)
    assert torch.all((cell.bias_ih + cell.bias_hh)[8:16] == 2.0)
    with torch.no_grad():
        cell.weight_ih.zero_()
    cell.reset_parameters()
    assert cell.weight_ih.abs().max() > 0


# Gates --------------------------------------------------------------------------------------------


def manual_gates(lstm: LSTM, x: torch.Tensor, suffix: str = "_l0") -> torch.Tensor:
    """Gates of one forward-direction layer, step by step through the cell function."""
    weights = [getattr(lstm, n + suffix) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h = c = x.new_zeros(x.shape[1], lstm.hidden_size)
    steps = []
    for x_t in x:
        h, c, gates = lstm_cell(x_t, h, c, *weights)
        steps.append(torch.stack(gates, dim=-2))
    return torch.stack(steps)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_return_gates(backend):
    torch.manual_seed(11)
    lstm = LSTM(3, 4, 2, bidirectional=True, backend=backend).double()
    x = torch.randn(6, 5, 3, dtype=torch.double)
    lengths = [6, 2, 1, 5, 6]
    out, _, gates = lstm(x, lengths=lengths, return_gates=True)
    assert len(gates) == 4 and all(g.shape == (6, 5, 4, 4) for g in gates)
    assert not any(g.requires_grad for g in gates)
    torch.testing.assert_close(gates[0][:, 0], manual_gates(lstm, x)[:, 0], **TOL)  # full-length row
    for b, n in enumerate(lengths):
        # each direction's gates, run alone over the sequence's valid part, reversed for the reverse one
        torch.testing.assert_close(gates[0][:n, b], manual_gates(lstm, x[:n, b : b + 1])[:, 0], **TOL)
        rev = manual_gates(lstm, x[:n, b : b + 1].flip(0), "_l0_reverse")[:, 0].flip(0)
        torch.testing.assert_close(gates[1][:n, b], rev, **TOL)
        assert all(torch.all(g[n:, b] == 0) for g in gates)
    # the layer-1 gates reproduce the layer-1 output through the cell equations
    i, f, g, o = gates[2].unbind(2)
    c, hs = torch.zeros(5, 4, dtype=torch.double), []
    for t in range(6):
        c = f[t] * c + i[t] * g[t]
        hs.append(o[t] * torch.tanh(c))
    torch.testing.assert_close(torch.stack(hs), out[..., :4], **TOL)
    plain = lstm(x, lengths=lengths)
    assert len(plain) == 2
    torch.testing.assert_close(plain[0], out, **TOL)


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
def test_gates_of_both_backends_agree_batch_first(backend):
    torch.manual_seed(12)
    fast = LSTM(3, 4, 2, bidirectional=True, batch_first=True, backend=backend).double()
    ref = LSTM(3, 4, 2, bidirectional=True, batch_first=True, backend="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, 6, 3, dtype=torch.double)
    g_fast = fast(x, lengths=[6, 3, 1, 6, 2], return_gates=True)[2]
    g_ref = ref(x, lengths=[6, 3, 1, 6, 2], return_gates=True)[2]
    assert g_fast[0].shape == (5, 6, 4, 4)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


# Backends and errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
def test_backends_agree_on_padded_batches(backend):
    torch.manual_seed(13)
    backends = ("fast", "reference", "torch")
    models = {b: build_lstm(b, 3, 4, 2, batch_first=True, bidirectional=True).double() for b in backends}
    models["reference"].load_state_dict(models["fast"].state_dict())
    models["torch"].load_state_dict(models["fast"].state_dict())
    x = torch.randn(4, 7, 3, dtype=torch.double)
    outs = {b: m(x, lengths=[7, 2, 5, 1]) for b, m in models.items()}
    for b in ("reference", "torch"):
        torch.testing.assert_close(outs[b][0], outs["fast"][0], **TOL)
        torch.testing.assert_close(outs[b][1][0], outs["fast"][1][0], **TOL)


def test_the_torch_backend_hides_its_gates():
    with pytest.raises(ValueError, match="hides its gates"):
        build_lstm("torch", 3, 4, 2, batch_first=True, bidirectional=True)(torch.randn(4, 7, 3), return_gates=True)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown LSTM backend 'cudnn'"):
        build_lstm("cudnn", 3, 4)


@pytest.mark.parametrize(
    ("kwargs", "call", "message"),
    [
        ({"backend": "cuda"}, None, "backend must be one of"),
        ({"backend": "torch"}, None, r"got 'torch' \(torch.nn.LSTM behind this interface: lstm_train.nn.build_lstm"),
        ({}, {"x": (5, 2, 3), "lengths": [5, 6]}, r"lengths must lie in \[1, 5\]"),
        ({}, {"x": (5, 2, 3), "lengths": [5, 0]}, r"lengths must lie in \[1, 5\]"),
        ({}, {"x": (5, 2, 3), "lengths": [5]}, "one length per sequence"),
    ],
)
def test_clear_errors(kwargs, call, message):
    """Errors of what torch.nn.LSTM does not have (backend, lengths); those it has: tests/nn/test_dropin.py."""
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        lstm = LSTM(**args)
        lstm(torch.randn(*call["x"]), lengths=call.get("lengths"))


def test_the_backend_table_names_every_value_at_every_level():
    """The docs' table of the backend choice (docs/lstm/index.md, "Backends": config key -> LSTM argument ->
    environment variable) lists every value each level takes, so a value cannot be added without its row."""
    page = (ROOT / "docs/lstm/index.md").read_text()
    section = page[page.index("## Backends\n") :].split("\n## ")[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    columns = [{m.group(1) for row in rows if (m := re.match(r'\s*`"?(\w+)"?`', row[k]))} for k in range(3)]
    assert columns == [set(BACKENDS), set(LAYERS), set(compiled.PATHS)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_cuda_matches_cpu(backend):
    torch.manual_seed(14)
    cpu = LSTM(3, 4, 2, bidirectional=True, backend=backend).double()
    gpu = LSTM(3, 4, 2, bidirectional=True, backend=backend, device="cuda", dtype=torch.double)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(6, 3, 3, dtype=torch.double)
    torch.testing.assert_close(gpu(x.cuda(), lengths=[6, 1, 4])[0].cpu(), cpu(x, lengths=[6, 1, 4])[0], **TOL)


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
def test_every_length_pattern_small(backend):
    """Exhaustive over all length vectors of a tiny batch, fast against torch (lengths 1..3, batch 3)."""
    torch.manual_seed(15)
    theirs, ours = twins(backend, num_layers=1, bidirectional=True)
    x = torch.randn(3, 3, 3, dtype=torch.double, requires_grad=True)
    for lengths in itertools.product((1, 2, 3), repeat=3):
        assert_parity(theirs, ours, x, None, list(lengths))
