"""Property-based parity: random shapes, layers, directions, projections and lengths, against torch.nn.LSTM."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_train.nn import LSTM
from tests.test_nn_lstm import assert_parity


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
        "impl": draw(st.sampled_from(["fast", "reference"])),
        "lengths": lengths,
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=40, deadline=None)
@given(cases())
def test_random_shapes_match_torch(case):
    torch.manual_seed(case["seed"])
    kwargs = {k: case[k] for k in ("num_layers", "bidirectional", "batch_first", "proj_size")}
    theirs = torch.nn.LSTM(case["input_size"], case["hidden"], **kwargs).double()
    ours = LSTM(case["input_size"], case["hidden"], impl=case["impl"], **kwargs).double()
    ours.load_state_dict(theirs.state_dict())
    shape = (case["B"], case["T"]) if case["batch_first"] else (case["T"], case["B"])
    x = torch.randn(*shape, case["input_size"], dtype=torch.double, requires_grad=True)
    assert_parity(theirs, ours, x, None, case["lengths"])
