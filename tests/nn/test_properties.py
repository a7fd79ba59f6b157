"""Property-based parity: random shapes, layers, directions, projections and lengths, against torch.nn.LSTM."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_train.nn import LSTM
from tests.helpers import assert_parity
from tests.paths import PATHS, on_path


@st.composite
def cases(draw):
    T = draw(st.integers(1, 9))
    B = draw(st.integers(1, 5))
    padded = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if padded else None
    hidden = draw(st.integers(1, 6))
    return {
        "T": T,
        "B": B,
        "input_size": draw(st.integers(1, 6)),
        "hidden": hidden,
        "proj_size": draw(st.integers(0, hidden - 1)),
        "num_layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "path": draw(st.sampled_from(PATHS)),
        "lengths": lengths,
        "seed": draw(st.integers(0, 2**16)),
    }


@pytest.mark.usefixtures("compiled_kernel")
@settings(max_examples=40, deadline=None)
@given(cases())
def test_random_shapes_match_torch(case):
    torch.manual_seed(case["seed"])
    kwargs = {k: case[k] for k in ("num_layers", "bidirectional", "batch_first", "proj_size")}
    theirs = torch.nn.LSTM(case["input_size"], case["hidden"], **kwargs).double()
    with on_path(case["path"]) as backend:
        ours = LSTM(case["input_size"], case["hidden"], backend=backend, **kwargs).double()
        ours.load_state_dict(theirs.state_dict())
        shape = (case["B"], case["T"]) if case["batch_first"] else (case["T"], case["B"])
        x = torch.randn(*shape, case["input_size"], dtype=torch.double, requires_grad=True)
        assert_parity(theirs, ours, x, None, case["lengths"])


@pytest.mark.parametrize("backend", ["fast", "reference", "torch"])
def test_chrono_init_spreads_forget_biases_and_mirrors_them_in_the_input_gate(backend):
    from lstm_train.nn import Chrono, build_lstm

    torch.manual_seed(0)
    lstm = build_lstm(backend, 3, 500, num_layers=2, forget_bias=Chrono(200))
    H = 500
    for layer in range(2):
        b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        i, f, g, o = b.detach().split(H)
        assert torch.equal(i, -f) and not g.any() and not o.any()
        assert float(f.min()) >= 0.0 and float(f.max()) <= math.log(199) + 1e-6
        # log of U(1, 199): its mean is E[log u] = (199 log 199 - 199 - (1 log 1 - 1)) / 198
        expected = (199 * math.log(199) - 199 + 1) / 198
        assert float(f.mean()) == pytest.approx(expected, abs=0.15)
    with pytest.raises(ValueError, match="max_len must be an integer >= 2"):
        Chrono(1)
