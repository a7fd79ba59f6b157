"""The LSTM without autograd (no_grad / inference_mode, what sampling and decoding run): the same numbers as
with autograd, state carried over T=1 calls, and results that follow every kind of weight update (nothing
derived from the weights is kept between calls)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lstm_train.nn import LSTM
from lstm_train.nn import fast as fast_module
from tests.helpers import flat
from tests.paths import FAST_PATHS, PATHS

pytestmark = pytest.mark.usefixtures("one_thread")

NO_GRAD = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
TOL = {"atol": 1e-12, "rtol": 0}


def model(backend: str = "fast", **kwargs) -> LSTM:
    torch.manual_seed(0)
    return LSTM(3, 4, backend=backend, **kwargs).double()


def run(lstm: LSTM, x: torch.Tensor, hx=None, lengths=None, mode: str | None = None, **kwargs):
    """Forward with autograd (mode None: the training path) or under one of NO_GRAD."""
    if mode is None:
        return lstm(x, hx, lengths=lengths, **kwargs)
    with NO_GRAD[mode]():
        result = lstm(x, hx, lengths=lengths, **kwargs)
    return result


def assert_same_bits(a, b) -> None:
    for x, y in zip(flat(a), flat(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("mode", list(NO_GRAD))
@pytest.mark.parametrize(
    "kwargs",
    [
        {}, {"num_layers": 2}, {"batch_first": True}, {"bidirectional": True, "num_layers": 2},
        {"bidirectional": True, "num_layers": 2, "proj_size": 2},
    ],
    ids=["1layer", "2layers", "batch_first", "bi2layers", "bi2layers_projected"],
)
@pytest.mark.parametrize("lengths", [None, [5, 1, 3]], ids=["full", "padded"])
@pytest.mark.parametrize("steps", [1, 5])
def test_no_grad_path_gives_the_training_paths_bits(backend, mode, kwargs, lengths, steps):
    lstm = model(backend, **kwargs)
    B, D = 3, 2 if lstm.bidirectional else 1
    lengths = None if lengths is None else [min(n, steps) for n in lengths]
    x = torch.randn((B, steps, 3) if lstm.batch_first else (steps, B, 3), dtype=torch.double)
    hx = tuple(torch.randn(lstm.num_layers * D, B, n, dtype=torch.double) for n in (lstm.proj_size or 4, 4))
    for state in (None, hx):
        expected = run(lstm, x, state, lengths, return_gates=True)
        assert expected[0].requires_grad  # really the autograd path
        assert_same_bits(run(lstm, x, state, lengths, mode, return_gates=True), expected)
        assert_same_bits(run(lstm, x, state, lengths, mode), expected[:2])  # and again


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
@pytest.mark.parametrize("mode", list(NO_GRAD))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_state_carried_over_single_steps_equals_one_long_call(backend, mode, num_layers):
    """Decoding: T=1 calls, each from the previous (h, c), against one T=N call and torch.nn.LSTM."""
    lstm = model(backend, num_layers=num_layers, batch_first=True)
    theirs = torch.nn.LSTM(3, 4, num_layers, batch_first=True).double()
    theirs.load_state_dict(lstm.state_dict())
    x = torch.randn(2, 6, 3, dtype=torch.double)
    full_out, (full_h, full_c) = run(lstm, x)
    torch_out, (torch_h, torch_c) = theirs(x)
    state, outs = None, []
    with NO_GRAD[mode]():
        for t in range(x.shape[1]):
            out, state = lstm(x[:, t : t + 1], state)
            outs.append(out)
    for ours, reference in ((torch.cat(outs, 1), full_out), (state[0], full_h), (state[1], full_c)):
        torch.testing.assert_close(ours, reference.detach(), **TOL)
    for ours, reference in ((torch.cat(outs, 1), torch_out), (state[0], torch_h), (state[1], torch_c)):
        torch.testing.assert_close(ours, reference.detach(), **TOL)


def fresh_result(lstm: LSTM, x: torch.Tensor, hx=None):
    """What the weights now give, computed by a new module on the autograd path."""
    twin = LSTM(3, 4, lstm.num_layers, bidirectional=lstm.bidirectional).double()
    twin.load_state_dict(lstm.state_dict())
    return run(twin, x, hx)


def sgd_step(lstm: LSTM, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(lstm.parameters(), lr=0.5)
    lstm(x)[0].sum().backward()
    opt.step()


def in_place(lstm: LSTM, x: torch.Tensor) -> None:
    with torch.no_grad():
        lstm.weight_hh_l0.mul_(-1.5)


def in_place_in_inference_mode(lstm: LSTM, x: torch.Tensor) -> None:
    with torch.inference_mode():
        lstm.bias_hh_l0.add_(0.25)


def load_state(lstm: LSTM, x: torch.Tensor) -> None:
    state = {k: v * 2 for k, v in lstm.state_dict().items()}
    lstm.load_state_dict(state)


def replace_data(lstm: LSTM, x: torch.Tensor) -> None:
    lstm.weight_ih_l0.data = torch.randn_like(lstm.weight_ih_l0)


def data_in_place(lstm: LSTM, x: torch.Tensor) -> None:
    """What EMA updates, pruning and weight surgery do: writes through .data, which bump no version counter."""
    lstm.weight_hh_l0.data.mul_(-1.5)


def data_copy(lstm: LSTM, x: torch.Tensor) -> None:
    lstm.weight_ih_l0.data.copy_(torch.randn_like(lstm.weight_ih_l0))


def data_slice(lstm: LSTM, x: torch.Tensor) -> None:
    lstm.bias_ih_l0.data[:4] = 3.0  # the input gate's bias


def ema(lstm: LSTM, x: torch.Tensor) -> None:
    for p in lstm.parameters():
        p.data.mul_(0.5).add_(torch.randn_like(p), alpha=0.5)


def round_trip_dtype(lstm: LSTM, x: torch.Tensor) -> None:
    lstm.float()
    with torch.no_grad():
        lstm.weight_hh_l0.add_(1.0)
    lstm.double()


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
@pytest.mark.parametrize("mode", list(NO_GRAD))
@pytest.mark.parametrize(
    "update",
    [
        sgd_step, in_place, in_place_in_inference_mode, load_state, replace_data, data_in_place, data_copy,
        data_slice, ema, round_trip_dtype,
    ],
)
def test_a_weight_update_after_a_call_is_seen(backend, mode, update):
    lstm = model(backend, num_layers=2)
    x = torch.randn(1, 2, 3, dtype=torch.double)
    hx = tuple(torch.randn(2, 2, 4, dtype=torch.double) for _ in range(2))  # W_hh h0 is not zero
    before = run(lstm, x, hx, mode=mode)
    assert_same_bits(run(lstm, x, hx, mode=mode), before)
    update(lstm, x)
    after = run(lstm, x, hx, mode=mode)
    assert not torch.equal(after[0], before[0])
    torch.testing.assert_close(after[0], fresh_result(lstm, x, hx)[0].detach(), **TOL)


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
@pytest.mark.parametrize("copier", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"])
def test_a_copy_follows_its_own_weights(backend, copier):
    lstm = model(backend)
    x = torch.randn(2, 2, 3, dtype=torch.double)
    for _ in range(3):  # several versions, so the copy's fresh version counters could collide with the cache's
        with torch.no_grad():
            lstm.weight_hh_l0.mul_(0.9)
    run(lstm, x, mode="no_grad")
    twin = copier(lstm)
    with torch.no_grad():
        twin.weight_hh_l0.mul_(-1)
        twin.weight_hh_l0.mul_(2)
        twin.weight_hh_l0.mul_(1.5)
    torch.testing.assert_close(run(twin, x, mode="no_grad")[0], fresh_result(twin, x)[0].detach(), **TOL)


@pytest.mark.parametrize("backend", ["fast"], indirect=True)  # the constants of the pure-PyTorch loop
def test_inference_first_then_training_then_inference(backend, monkeypatch):
    """Tensors made under inference_mode (the loop's constants) must never reach the autograd path."""
    monkeypatch.setattr(fast_module, "_CONSTANTS", {})  # so the first call of this test makes them
    lstm = model(num_layers=2)
    theirs = torch.nn.LSTM(3, 4, 2).double()
    theirs.load_state_dict(lstm.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.double)
    run(lstm, x, mode="inference_mode")
    out, _ = lstm(x)
    out.sum().backward()
    theirs(x)[0].sum().backward()
    for ours, reference in zip(lstm.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, reference.grad, **TOL)
    assert_same_bits(run(lstm, x, mode="no_grad"), run(lstm, x))


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
@pytest.mark.parametrize("mode", list(NO_GRAD))
def test_recording_without_autograd_matches_recording_with_it(backend, mode):
    lstm = model(backend, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 5, 3, dtype=torch.double)
    with lstm.recording() as with_grad:
        expected = run(lstm, x, lengths=[5, 2, 4])
    with lstm.recording() as without:
        for _ in range(2):
            assert_same_bits(run(lstm, x, lengths=[5, 2, 4], mode=mode), expected)
    assert len(without) == 2
    for rec in without:
        for a, b in zip(rec.gates + rec.cells, with_grad[0].gates + with_grad[0].cells, strict=True):
            assert torch.equal(a, b)
        assert rec.hidden_grads is None


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
@pytest.mark.parametrize("mode", list(NO_GRAD))
def test_unbatched_and_packed_inputs_without_autograd(backend, mode):
    lstm = model(backend, num_layers=2)
    x = torch.randn(1, 3, dtype=torch.double)  # one unbatched step
    assert_same_bits(run(lstm, x, mode=mode), run(lstm, x))
    padded = torch.randn(4, 3, 3, dtype=torch.double)
    packed = torch.nn.utils.rnn.pack_padded_sequence(padded, [2, 4, 1], enforce_sorted=False)
    with NO_GRAD[mode]():
        out, (h, c) = lstm(packed)
    expected_out, (expected_h, expected_c) = lstm(packed)
    for a, b in ((out.data, expected_out.data), (h, expected_h), (c, expected_c)):
        assert torch.equal(a, b.detach())
