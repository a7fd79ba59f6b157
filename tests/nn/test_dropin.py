"""Our LSTM as a drop-in for torch.nn.LSTM beyond plain forward and backward: projections, the attributes
code reads, parametrizations, higher-order and forward-mode gradients, torch.func, exception types, empty
batches, autocast and export. Every test runs the same thing through torch and through ours."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn.utils import parametrizations, parametrize
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_train.nn import LSTM, LSTMCell, TorchLSTM, build_lstm, compiled, lstm_cell
from lstm_train.nn import fast as fast_module
from lstm_train.nn import lstm as lstm_module
from tests.helpers import assert_parity, grads, twins
from tests.paths import FAST_PATHS, PATHS

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"atol": 1e-9, "rtol": 0}


def state(lstm: nn.Module, B: int, *, requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (h_0, c_0) of the right shapes: h has proj_size features when there is a projection."""
    D = 2 if lstm.bidirectional else 1
    shapes = (lstm.num_layers * D, B, lstm.proj_size or lstm.hidden_size), (lstm.num_layers * D, B, lstm.hidden_size)
    return tuple(torch.randn(s, dtype=torch.double, requires_grad=requires_grad) for s in shapes)


def assert_all_close(actual, expected, **tol) -> None:
    for a, b in zip(actual, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **(tol or TOL))


# proj_size ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("lengths", [None, [5, 1, 7, 3]], ids=["full", "padded"])
def test_projection_parity_with_torch(backend, num_layers, bidirectional, batch_first, with_state, lengths):
    torch.manual_seed(0)
    theirs, ours = twins(backend, hidden=5, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                         proj_size=2)
    x = torch.randn((4, 7, 3) if batch_first else (7, 4, 3), dtype=torch.double, requires_grad=True)
    hx = state(ours, 4, requires_grad=True) if with_state else None
    assert_parity(theirs, ours, x, hx, lengths)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_projection_shapes_names_and_packed_input(backend):
    torch.manual_seed(1)
    positional = (3, 5, 2, True, False, 0.0, True, 2)  # proj_size is torch's 8th positional argument
    theirs = nn.LSTM(*positional).double()
    ours = LSTM(*positional, backend=backend).double()
    assert ours.proj_size == theirs.proj_size == 2
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 4, 3, dtype=torch.double)
    packed = pack_padded_sequence(x, torch.tensor([4, 6, 1, 4]), enforce_sorted=False)
    (o1, (h1, c1)), (o2, (h2, c2)) = theirs(packed), ours(packed)
    assert h2.shape == (4, 4, 2) and c2.shape == (4, 4, 5) and o2.data.shape == (15, 4)
    assert_all_close((o2.data, h2, c2), (o1.data, h1, c1))
    unbatched = ours(x[:, 0]), theirs(x[:, 0])
    assert_all_close((unbatched[0][0], *unbatched[0][1]), (unbatched[1][0], *unbatched[1][1]))
    assert "proj_size=2" in repr(ours)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_projection_gates_follow_the_cell_equations(backend):
    """Gates and cell states of a projected LSTM against a manual unroll of lstm_cell (with weight_hr)."""
    torch.manual_seed(2)
    lstm = LSTM(3, 5, 1, bidirectional=True, proj_size=2, backend=backend).double()
    x = torch.randn(6, 3, 3, dtype=torch.double)
    lengths = [6, 2, 4]
    with lstm.recording() as calls:
        out, (h_n, c_n), gates = lstm(x, lengths=lengths, return_gates=True)
    for b, n in enumerate(lengths):
        for k, steps in ((0, range(n)), (1, range(n - 1, -1, -1))):
            h, c = x.new_zeros(2), x.new_zeros(5)
            for t in steps:
                h, c, acts = lstm_cell(x[t, b], h, c, *lstm._weights(k))
                torch.testing.assert_close(gates[k][t, b], torch.stack(acts), **TOL)
                torch.testing.assert_close(calls[0].cells[k][t, b], c, **TOL)
                torch.testing.assert_close(out[t, b, 2 * k : 2 * k + 2], h, **TOL)
            torch.testing.assert_close(h_n[k, b], h, **TOL)
            torch.testing.assert_close(c_n[k, b], c, **TOL)


@pytest.mark.parametrize("make", [partial(LSTM, backend="fast"), TorchLSTM, partial(build_lstm, "reference")],
                         ids=["ours", "torch_backend", "build_lstm"])
def test_projection_initialisation(make):
    torch.manual_seed(3)
    H, P = 200, 60
    lstm = make(100, H, 2, proj_size=P, forget_bias=0.5)
    assert lstm.weight_hh_l1.shape == (4 * H, P) and lstm.weight_ih_l1.shape == (4 * H, P)
    for name, fan in (("weight_ih_l1", P), ("weight_hh_l0", P), ("weight_hr_l0", H)):
        w = getattr(lstm, name).detach()
        bound = (6 / (fan + (P if name.startswith("weight_hr") else H))) ** 0.5  # Xavier on each (H, fan) block
        assert bound * 0.97 < w.abs().max() <= bound, name
    effective = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().split(H)
    assert torch.all(effective[1] == 0.5) and all(torch.all(effective[k] == 0) for k in (0, 2, 3))
    out, (h, _) = lstm(torch.randn(7, 2, 100), lengths=[7, 3])
    assert out.shape == (7, 2, P) and h.shape == (2, 2, P)


# Attributes and parametrizations ------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"proj_size": 2, "bidirectional": True, "num_layers": 2},
                                    {"proj_size": 3, "bias": False}])
def test_attributes_torch_code_reads(kwargs):
    theirs = nn.LSTM(3, 5, **kwargs)
    ours = LSTM(3, 5, **kwargs)
    for name in ("mode", "proj_size", "_flat_weights_names", "_all_weights", "input_size", "hidden_size",
                 "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert [w.shape for w in ours._flat_weights] == [w.shape for w in theirs._flat_weights]
    assert [[w.shape for w in ws] for ws in ours.all_weights] == [[w.shape for w in ws] for ws in theirs.all_weights]
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names, strict=True))
    ours.flatten_parameters()


def test_flat_weights_follow_replacements():
    ours = LSTM(3, 5)
    new = nn.Parameter(torch.randn(20, 5))
    ours.weight_hh_l0 = new
    assert ours._flat_weights[1] is new and ours.all_weights[0][1] is new
    ours.weight_ih_l0.data = torch.zeros(20, 3)
    assert torch.all(ours._flat_weights[0] == 0)


def parametrized_twins(backend: str, register) -> tuple[nn.LSTM, LSTM]:
    """Twins with the same parametrization on weight_hh_l0 (and what it keeps) in both."""
    torch.manual_seed(4)
    theirs, ours = twins(backend, hidden=5, num_layers=2, proj_size=2)
    for m in (theirs, ours):
        register(m)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


class Scale(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 0.5 * w


REGISTRATIONS = {
    "weight_norm": lambda m: parametrizations.weight_norm(m, "weight_hh_l0"),
    "orthogonal": lambda m: parametrizations.orthogonal(m, "weight_hh_l0"),
    "custom_on_weight_hr": lambda m: parametrize.register_parametrization(m, "weight_hr_l1", Scale()),
}


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("registration", list(REGISTRATIONS))
def test_parametrizations(backend, registration):
    theirs, ours = parametrized_twins(backend, REGISTRATIONS[registration])
    x = torch.randn(5, 3, 3, dtype=torch.double, requires_grad=True)
    assert_parity(theirs, ours, x, None, [5, 2, 4])
    with torch.no_grad():  # an update of the parametrized original is seen at once
        for m in (theirs, ours):
            next(p for n, p in m.named_parameters() if "original" in n).mul_(1.5)
    with torch.inference_mode():
        assert_all_close(ours(x.detach())[1], theirs(x.detach())[1])


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_old_weight_norm(backend):
    """torch.nn.utils.weight_norm (deprecated, still used) recomputes the weight in a forward pre-hook."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs, ours = parametrized_twins(backend, lambda m: torch.nn.utils.weight_norm(m, "weight_hh_l0"))
    x = torch.randn(5, 3, 3, dtype=torch.double, requires_grad=True)
    assert_parity(theirs, ours, x)


# Higher-order and forward-mode gradients, torch.func -----------------------------------------------


def functional(lstm: nn.Module, lengths=None):
    """(x, h0, c0, *parameters) -> (output, h_n, c_n), for gradcheck and torch.func."""
    names = [n for n, _ in lstm.named_parameters()]

    def f(x, h0, c0, *params):
        kwargs = {} if lengths is None else {"lengths": lengths}
        out, (h, c) = torch.func.functional_call(lstm, dict(zip(names, params, strict=True)), (x, (h0, c0)), kwargs)
        return out, h, c

    return f


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("proj_size", [0, 1])
def test_gradgradcheck(backend, proj_size):
    torch.manual_seed(5)
    lstm = LSTM(2, 2, 1, bidirectional=True, proj_size=proj_size, backend=backend).double()
    x = torch.randn(3, 2, 2, dtype=torch.double, requires_grad=True)
    inputs = (x, *state(lstm, 2, requires_grad=True), *lstm.parameters())
    assert torch.autograd.gradgradcheck(functional(lstm, [3, 1]), inputs, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("proj_size", [0, 1])
def test_gradgradcheck_full(proj_size):
    torch.manual_seed(6)
    lstm = LSTM(2, 2, 2, bidirectional=True, proj_size=proj_size).double()
    x = torch.randn(3, 2, 2, dtype=torch.double, requires_grad=True)
    inputs = (x, *state(lstm, 2, requires_grad=True), *lstm.parameters())
    assert torch.autograd.gradgradcheck(functional(lstm, [3, 1]), inputs)


class Net(nn.Module):
    """An LSTM followed by a Linear, the usual place of a gradient penalty."""

    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.lstm = lstm
        self.head = nn.Linear(lstm.proj_size or lstm.hidden_size, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = self.lstm(x)
        return self.head(out).sum() + (h * c[..., : h.shape[-1]]).sum()


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("wrt", ["input", "weights"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_gradient_penalty_matches_torch(backend, wrt, proj_size):
    """loss + |d loss / d (input or weights)|^2, backward: every weight's grad as torch.nn.LSTM's, to 1e-9."""
    torch.manual_seed(7)
    theirs, ours = twins(backend, hidden=5, num_layers=2, proj_size=proj_size)
    nets = Net(theirs), Net(ours)
    nets[1].head.load_state_dict(nets[0].head.state_dict())
    x = torch.randn(6, 3, 3, dtype=torch.double, requires_grad=True)
    results = []
    for net in nets:
        loss = net(x)
        targets = [x] if wrt == "input" else list(net.lstm.parameters())
        penalty = sum(g.pow(2).sum() for g in torch.autograd.grad(loss, targets, create_graph=True))
        results.append(torch.autograd.grad(loss + penalty, [x, *net.parameters()]))
    assert all(g.abs().max() > 0 for g in results[1])  # every weight gets its second-order term
    assert_all_close(results[1], results[0])


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
def test_double_backward_takes_the_differentiable_path(backend, monkeypatch):
    """The hand-written backward (Python or compiled) serves first-order gradients; with create_graph the
    recorded reference maths do (the hand-written one has no graph of its own)."""
    calls = []
    original = fast_module.differentiable_backward

    def spy(*args):
        calls.append(1)
        return original(*args)

    for module in (fast_module, compiled):
        monkeypatch.setattr(module, "differentiable_backward", spy)
    torch.manual_seed(8)
    _, ours = twins(backend, hidden=5, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.double, requires_grad=True)
    torch.autograd.grad(ours(x)[0].sum(), x)
    assert calls == []
    (g,) = torch.autograd.grad(ours(x)[0].pow(2).sum(), x, create_graph=True)
    assert len(calls) == 2 and g.requires_grad  # one call per layer


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_recording_during_a_double_backward(backend):
    """The recorded dL/dh_t are the same whether the backward builds a graph or not."""
    torch.manual_seed(8)
    _, ours = twins(backend, hidden=5, bidirectional=True, proj_size=2)
    x = torch.randn(5, 3, 3, dtype=torch.double, requires_grad=True)
    recorded = []
    for create_graph in (False, True):
        with ours.recording(grads=True) as calls:
            torch.autograd.grad(ours(x, lengths=[5, 2, 4])[0].pow(2).sum(), x, create_graph=create_graph)
        recorded.append(calls[0].hidden_grads)
    assert not any(g.requires_grad for g in recorded[1])
    assert_all_close(recorded[1], recorded[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("proj_size", [0, 2])
def test_forward_mode_ad_matches_torch(backend, proj_size):
    torch.manual_seed(9)
    theirs, ours = twins(backend, hidden=5, num_layers=2, bidirectional=True, proj_size=proj_size)
    x, tx = torch.randn(2, 5, 4, 3, dtype=torch.double)
    hx, thx = state(ours, 4), state(ours, 4)
    tangents = []
    for lstm in (theirs, ours):
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(x, tx), tuple(forward_ad.make_dual(s, t) for s, t in zip(hx, thx, strict=True))
            out, (h, c) = lstm(*dual)
            tangents.append([forward_ad.unpack_dual(t).tangent for t in (out, h, c)])
    assert all(t is not None for t in tangents[1])
    assert_all_close(tangents[1], tangents[0])


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_torch_func_grad_jacrev_jvp_match_torch(backend):
    torch.manual_seed(10)
    theirs, ours = twins(backend, hidden=5, num_layers=2, proj_size=2)
    x = torch.randn(4, 2, 3, dtype=torch.double)
    hx = state(ours, 2)
    results = []
    for lstm in (theirs, ours):
        f = functional(lstm)
        params = tuple(lstm.parameters())
        loss = lambda *a, f=f: sum(o.pow(2).sum() for o in f(*a))  # noqa: E731
        results.append([
            *torch.func.grad(loss, argnums=tuple(range(3 + len(params))))(x, *hx, *params),
            torch.func.jacrev(lambda x, f=f, p=params: f(x, *hx, *p)[0])(x),
            torch.func.jvp(lambda x, f=f, p=params: f(x, *hx, *p)[1], (x,), (torch.ones_like(x),))[1],
        ])
    assert_all_close(results[1], results[0])


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_vmap(backend):
    """torch.nn.LSTM has no batching rule (vmap raises); ours runs under vmap as a loop over the batch does."""
    torch.manual_seed(11)
    theirs, ours = twins(backend, hidden=5, proj_size=2)
    xs = torch.randn(3, 4, 2, 3, dtype=torch.double)
    with pytest.raises(RuntimeError, match="Batching rule not implemented"):
        torch.func.vmap(lambda x: theirs(x)[0])(xs)
    batched = torch.func.vmap(lambda x: ours(x, lengths=[4, 2])[0])(xs)
    assert_all_close(batched, torch.stack([ours(x, lengths=[4, 2])[0] for x in xs]))
    # an ensemble: one forward of several weight sets (torch.func.stack_module_state)
    members = [LSTM(3, 5, proj_size=2, backend=backend).double() for _ in range(3)]
    params, buffers = torch.func.stack_module_state(members)
    ensemble = torch.func.vmap(lambda p, b, x: torch.func.functional_call(ours, (p, b), (x,))[0], in_dims=(0, 0, None))
    assert_all_close(ensemble(params, buffers, xs[0]), torch.stack([m(xs[0])[0] for m in members]))


def test_transforms_and_tracing_take_the_reference_maths(monkeypatch):
    calls = []
    original = lstm_module.reference_layer

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(lstm_module, "reference_layer", spy)
    ours = LSTM(3, 4).double()
    x = torch.randn(4, 2, 3, dtype=torch.double)
    ours(x)[0].sum().backward()
    with torch.no_grad():
        ours(x)
    assert calls == []
    torch.func.grad(lambda x: ours(x)[0].sum())(x)
    assert len(calls) == 1
    with forward_ad.dual_level():
        ours(forward_ad.make_dual(x, torch.ones_like(x)))
    assert len(calls) == 2


# Exception types ----------------------------------------------------------------------------------


def raised(fn) -> type[BaseException] | None:
    try:
        fn()
    except Exception as e:
        return type(e)
    return None


def tensor(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


# name -> (constructor kwargs on top of LSTM(3, 4), a call of the built module or None)
LSTM_MISTAKES = {
    "batch_first is a string": ({"batch_first": "False"}, None),
    "bias is a string": ({"bias": "yes"}, None),
    "bias is an int": ({"bias": 1}, None),
    "input_size is a float": ({"input_size": 3.0}, None),
    "hidden_size is a float": ({"hidden_size": 4.0}, None),
    "num_layers is a float": ({"num_layers": 2.0}, None),
    "hidden_size 0": ({"hidden_size": 0}, None),
    "input_size negative": ({"input_size": -1}, None),
    "num_layers 0": ({"num_layers": 0}, None),
    "dropout above 1": ({"dropout": 1.5, "num_layers": 2}, None),
    "dropout negative": ({"dropout": -0.1, "num_layers": 2}, None),
    "dropout is a string": ({"dropout": "0.5", "num_layers": 2}, None),
    "proj_size negative": ({"proj_size": -1}, None),
    "proj_size equal to hidden_size": ({"proj_size": 4}, None),
    "proj_size is a float": ({"proj_size": 2.0}, None),
    "input of 1-D": ({}, lambda m: m(tensor(5))),
    "input of 4-D": ({}, lambda m: m(tensor(5, 2, 3, 1))),
    "input features": ({}, lambda m: m(tensor(5, 2, 2))),
    "input features, unbatched": ({}, lambda m: m(tensor(5, 4))),
    "zero-length sequence": ({}, lambda m: m(tensor(0, 2, 3))),
    "zero-length sequence, batch_first": ({"batch_first": True}, lambda m: m(tensor(2, 0, 3))),
    "input dtype": ({}, lambda m: m(tensor(5, 2, 3, dtype=torch.float64))),
    "integer input": ({}, lambda m: m(torch.ones(5, 2, 3, dtype=torch.long))),
    "h0 batch": ({}, lambda m: m(tensor(5, 2, 3), (tensor(1, 3, 4), tensor(1, 2, 4)))),
    "c0 hidden": ({}, lambda m: m(tensor(5, 2, 3), (tensor(1, 2, 4), tensor(1, 2, 5)))),
    "h0 layers": ({"num_layers": 2}, lambda m: m(tensor(5, 2, 3), (tensor(1, 2, 4), tensor(2, 2, 4)))),
    "h0 of 2-D for batched input": ({}, lambda m: m(tensor(5, 2, 3), (tensor(2, 4), tensor(2, 4)))),
    "h0 of 3-D for unbatched input": ({}, lambda m: m(tensor(5, 3), (tensor(1, 1, 4), tensor(1, 1, 4)))),
    "h0 without projection size": ({"proj_size": 2}, lambda m: m(tensor(5, 2, 3), (tensor(1, 2, 4), tensor(1, 2, 4)))),
    "c0 with projection size": ({"proj_size": 2}, lambda m: m(tensor(5, 2, 3), (tensor(1, 2, 2), tensor(1, 2, 2)))),
    "hx dtype": ({}, lambda m: m(tensor(5, 2, 3), (tensor(1, 2, 4, dtype=torch.float64), tensor(1, 2, 4)))),
    "packed input of other features": ({}, lambda m: m(pack_padded_sequence(tensor(5, 2, 2), torch.tensor([5, 3])))),
}


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("mistake", list(LSTM_MISTAKES))
def test_lstm_raises_torchs_exception_type(backend, mistake):
    kwargs, call = LSTM_MISTAKES[mistake]

    def attempt(cls):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = cls(**{"input_size": 3, "hidden_size": 4, **kwargs})
            if call is not None:
                call(module)

        return run

    expected = raised(attempt(nn.LSTM))
    assert expected is not None, "torch accepts this: not a mistake to test"
    with pytest.raises(expected) as info:
        attempt(partial(LSTM, backend=backend))()
    assert "\n" not in str(info.value)


CELL_MISTAKES = {
    "input of 3-D": lambda m: m(tensor(1, 2, 3)),
    "input features": lambda m: m(tensor(2, 2)),
    "hx of 4-D": lambda m: m(tensor(2, 3), (tensor(1, 1, 2, 4), tensor(2, 4))),
    "h batch 1 (was broadcast)": lambda m: m(tensor(2, 3), (tensor(1, 4), tensor(2, 4))),
    "c batch 1 (was broadcast)": lambda m: m(tensor(2, 3), (tensor(2, 4), tensor(1, 4))),
    "h hidden 1 (was broadcast)": lambda m: m(tensor(2, 3), (tensor(2, 1), tensor(2, 4))),
    "c hidden 1 (was broadcast)": lambda m: m(tensor(2, 3), (tensor(2, 4), tensor(2, 1))),
    "unbatched input, batched hx": lambda m: m(tensor(3), (tensor(1, 4), tensor(1, 4))),
    "batched input, unbatched hx": lambda m: m(tensor(2, 3), (tensor(4), tensor(4))),
    "input dtype": lambda m: m(tensor(2, 3, dtype=torch.float64)),
}


@pytest.mark.parametrize("mistake", list(CELL_MISTAKES))
def test_lstm_cell_raises_torchs_exception_type(mistake):
    call = CELL_MISTAKES[mistake]
    expected = raised(lambda: call(nn.LSTMCell(3, 4)))
    assert expected is not None
    with pytest.raises(expected) as info:
        call(LSTMCell(3, 4))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [{"bias": "x"}, {"input_size": 3.0}, {"hidden_size": None}],
                         ids=["bias", "input_size", "hidden_size"])
def test_lstm_cell_constructor_types(kwargs):
    with pytest.raises(TypeError):
        LSTMCell(**{"input_size": 3, "hidden_size": 4, **kwargs})


def test_lstm_cell_needs_a_hidden_unit():
    with pytest.raises(ValueError, match="hidden_size must be at least 1"):
        LSTMCell(3, 0)


def test_bidirectional_must_be_a_bool():
    """torch takes any truthy value (the string "False" makes a bidirectional LSTM); ours refuses a non-int."""
    with pytest.raises(TypeError, match="bidirectional should be of type bool"):
        LSTM(3, 4, bidirectional="False")
    assert LSTM(3, 4, bidirectional=1).bidirectional


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_dropout_one_is_accepted_as_torch_accepts_it(backend):
    """dropout=1 zeros every layer's output but the last's in training, as torch.nn.LSTM does."""
    torch.manual_seed(12)
    theirs, ours = twins(backend, hidden=5, num_layers=2, dropout=1)
    assert ours.dropout == theirs.dropout == 1.0
    x = torch.randn(5, 2, 3, dtype=torch.double)
    assert_all_close(ours.train()(x)[0:1], theirs.train()(x)[0:1])
    assert_all_close(ours.eval()(x)[0:1], theirs.eval()(x)[0:1])


# Empty batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize(
    "kwargs", [{}, {"batch_first": True, "num_layers": 2}, {"bidirectional": True, "proj_size": 2}]
)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_empty_batch(backend, kwargs, with_state, grad):
    torch.manual_seed(13)
    theirs, ours = twins(backend, hidden=5, **kwargs)
    for T in (4, 1):
        x = torch.randn((0, T, 3) if ours.batch_first else (T, 0, 3), dtype=torch.double, requires_grad=grad)
        hx = state(ours, 0, requires_grad=grad) if with_state else None
        with torch.set_grad_enabled(grad):
            expected, actual = theirs(x, hx), ours(x, hx)
            assert_all_close((actual[0], *actual[1]), (expected[0], *expected[1]))
            assert ours(x, hx, lengths=[])[0].shape == expected[0].shape
        if grad:
            actual = grads((actual[0], *actual[1]), [x, *ours.parameters()])
            expected = grads((expected[0], *expected[1]), [x, *theirs.parameters()])
            assert_all_close(actual, expected)


def test_empty_batch_lstm_cell():
    theirs, ours = nn.LSTMCell(3, 4), LSTMCell(3, 4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(0, 3, requires_grad=True)
    assert [t.shape for t in ours(x)] == [t.shape for t in theirs(x)] == [(0, 4), (0, 4)]


# Autocast -----------------------------------------------------------------------------------------


def autocast_errors(lstm: nn.Module, reference: LSTM, x: torch.Tensor, device: str, dtype: torch.dtype):
    """Max errors of (output, h_n, c_n, d input, d weight_hh_l0) under autocast against float64, and the dtypes."""
    xx = x.clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        out, (h, c) = lstm(xx)
    (out.float().pow(2).sum() + h.float().sum()).backward()
    x64 = x.double().requires_grad_()
    ref_out, (ref_h, ref_c) = reference(x64)
    (ref_out.pow(2).sum() + ref_h.sum()).backward()
    pairs = ((out, ref_out), (h, ref_h), (c, ref_c), (xx.grad, x64.grad), (lstm.weight_hh_l0.grad,
                                                                         reference.weight_hh_l0.grad))
    errors = [(a.double() - b).abs().max().item() for a, b in pairs]
    return errors, [t.dtype for t in (out, h, c, xx.grad, lstm.weight_hh_l0.grad)]


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_cpu_autocast_bfloat16_is_as_precise_as_torch(backend):
    torch.manual_seed(14)
    theirs = nn.LSTM(8, 32, 2, bidirectional=True)
    ours = LSTM(8, 32, 2, bidirectional=True, backend=backend)
    reference = LSTM(8, 32, 2, bidirectional=True, backend="reference").double()
    for m in (ours, reference):
        m.load_state_dict(theirs.state_dict())
    x = torch.randn(20, 4, 8)
    torch_errors, torch_dtypes = autocast_errors(theirs, reference, x, "cpu", torch.bfloat16)
    reference.zero_grad()
    our_errors, our_dtypes = autocast_errors(ours, reference, x, "cpu", torch.bfloat16)
    assert our_dtypes == torch_dtypes == [torch.bfloat16] * 3 + [torch.float32] * 2
    for ours_, torch_ in zip(our_errors, torch_errors, strict=True):
        assert ours_ <= 1.25 * torch_ + 1e-4, (our_errors, torch_errors)


def test_autocast_after_a_lowered_layer_and_lstm_cell():
    """The input may arrive in bfloat16 (from an autocast Linear); the cell returns what torch's does."""
    torch.manual_seed(15)
    lin, ours = nn.Linear(3, 3), LSTM(3, 4)
    cell, their_cell = LSTMCell(3, 4), nn.LSTMCell(3, 4)
    cell.load_state_dict(their_cell.state_dict())
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = ours(lin(x))
        assert out.dtype == torch.bfloat16
        h, c = cell(x[0])
        h_t, c_t = their_cell(x[0])
    assert (h.dtype, c.dtype) == (h_t.dtype, c_t.dtype)
    torch.testing.assert_close(h, h_t, atol=1e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_cuda_autocast_float16_is_as_precise_as_torch(backend):
    torch.manual_seed(16)
    theirs = nn.LSTM(8, 32, 2).cuda()
    ours = LSTM(8, 32, 2, backend=backend).cuda()
    reference = LSTM(8, 32, 2, backend="reference").double().cuda()
    for m in (ours, reference):
        m.load_state_dict(theirs.state_dict())
    x = torch.randn(20, 4, 8, device="cuda")
    torch_errors, torch_dtypes = autocast_errors(theirs, reference, x, "cuda", torch.float16)
    reference.zero_grad()
    our_errors, our_dtypes = autocast_errors(ours, reference, x, "cuda", torch.float16)
    assert our_dtypes[:3] == torch_dtypes[:3]
    for ours_, torch_ in zip(our_errors, torch_errors, strict=True):
        assert ours_ <= 1.25 * torch_ + 1e-4, (our_errors, torch_errors)
