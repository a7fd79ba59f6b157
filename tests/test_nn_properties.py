"""Property-based parity: random shapes, layers, directions and lengths, each code path against torch.nn.LSTM."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_train.nn import LSTM
from tests.paths import PATHS, on_path
from tests.test_nn_lstm import assert_parity


@st.composite
def cases(draw):
    T = draw(st.integers(1, 9))
    B = draw(st.integers(1, 5))
    padded = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if padded else None
    return {
        "T": T,
        "B": B,
        "input_size": draw(st.integers(1, 6)),
        "hidden": draw(st.integers(1, 6)),
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
    kwargs = {k: case[k] for k in ("num_layers", "bidirectional", "batch_first")}
    theirs = torch.nn.LSTM(case["input_size"], case["hidden"], **kwargs).double()
    with on_path(case["path"]) as impl:
        ours = LSTM(case["input_size"], case["hidden"], impl=impl, **kwargs).double()
        ours.load_state_dict(theirs.state_dict())
        shape = (case["B"], case["T"]) if case["batch_first"] else (case["T"], case["B"])
        x = torch.randn(*shape, case["input_size"], dtype=torch.double, requires_grad=True)
        assert_parity(theirs, ours, x, None, case["lengths"])
