"""LSTM.recording: gates, cell states and dL/dh_t per step against a manual float64 unroll of the cell."""

from __future__ import annotations

import pytest
import torch

from lstm_train.nn import LSTM, lstm_cell
from tests.paths import FAST_PATHS, PATHS

pytestmark = pytest.mark.usefixtures("one_thread")


def unroll(lstm: LSTM, x: torch.Tensor, lengths: list[int], eps: dict) -> tuple:
    """Each sequence alone over its valid steps, eps[(k, b)][t] added to h_t (k: layer * D + direction).

    Returns per sequence b: the top layer's outputs (n, D*H), h_n and c_n (L*D, H), and the cell states
    {k: (n, H)}. With eps zero, d loss / d eps = d loss / d h_t: the reference for the recorded gradients.
    """
    D = 2 if lstm.bidirectional else 1
    results = []
    for b, n in enumerate(lengths):
        inp = x[:n, b]
        h_n, c_n, cells = [], [], {}
        for layer in range(lstm.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                w = lstm._weights(k)
                h, c = x.new_zeros(lstm.proj_size or lstm.hidden_size), x.new_zeros(lstm.hidden_size)
                hs, cs = [None] * n, [None] * n
                for t in range(n - 1, -1, -1) if d else range(n):
                    h, c, _ = lstm_cell(inp[t], h, c, *w)
                    h = h + eps[(k, b)][t]
                    hs[t], cs[t] = h, c
                h_n.append(h)
                c_n.append(c)
                cells[k] = torch.stack(cs)
                outs.append(torch.stack(hs))
            inp = torch.cat(outs, dim=-1)
        results.append((inp, torch.stack(h_n), torch.stack(c_n), cells))
    return results


@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("proj_size", [0, 2], ids=["plain", "projected"])
def test_recorded_cells_and_hidden_grads_match_a_manual_unroll(backend, bidirectional, proj_size):
    torch.manual_seed(0)
    T, B, I, H, L = 5, 3, 2, 3, 2
    P = proj_size or H  # the size of h: dL/dh_t has it too
    lengths = [5, 2, 4]
    lstm = LSTM(I, H, L, bidirectional=bidirectional, proj_size=proj_size, backend=backend).double()
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=torch.float64)
    w_out = torch.randn(T, B, D * P, dtype=torch.float64)
    w_h, w_c = torch.randn(L * D, B, P, dtype=torch.float64), torch.randn(L * D, B, H, dtype=torch.float64)

    with lstm.recording(grads=True) as calls:
        out, (h_n, c_n) = lstm(x, lengths=lengths)
        loss = (out * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()
        torch.autograd.grad(loss, list(lstm.parameters()))
    (rec,) = calls
    assert rec.names == ["l0", "l1"] if D == 1 else ["l0", "l0_reverse", "l1", "l1_reverse"]
    dh = rec.hidden_grads
    assert len(dh) == len(rec.cells) == L * D and all(g.shape == (T, B, P) for g in dh)

    eps = {
        (k, b): torch.zeros(n, P, dtype=torch.float64, requires_grad=True)
        for k in range(L * D)
        for b, n in enumerate(lengths)
    }
    manual = unroll(lstm, x, lengths, eps)
    loss = sum(
        (o * w_out[:n, b]).sum() + (hn * w_h[:, b]).sum() + (cn * w_c[:, b]).sum()
        for (o, hn, cn, _), n, b in zip(manual, lengths, range(B), strict=True)
    )
    keys = list(eps)
    expected = dict(zip(keys, torch.autograd.grad(loss, [eps[k] for k in keys]), strict=True))
    for (k, b), grad in expected.items():
        n = lengths[b]
        assert grad.abs().max() > 0
        torch.testing.assert_close(dh[k][:n, b], grad, atol=1e-12, rtol=0)
        torch.testing.assert_close(rec.cells[k][:n, b], manual[b][3][k].detach(), atol=1e-12, rtol=0)
        assert torch.all(dh[k][n:, b] == 0) and torch.all(rec.cells[k][n:, b] == 0)


@pytest.mark.parametrize("backend", FAST_PATHS, indirect=True)
def test_recording_returns_what_return_gates_returns_and_changes_nothing(backend):
    torch.manual_seed(1)
    lstm = LSTM(2, 3, 2, batch_first=True, bidirectional=True, backend=backend)
    x = torch.randn(4, 6, 2)
    lengths = [6, 3, 1, 4]
    out, state, gates = lstm(x, lengths=lengths, return_gates=True)
    with lstm.recording() as calls:
        out2, state2 = lstm(x, lengths=lengths)
        assert torch.equal(state2[0], state[0])
        lstm(x[:2], lengths=[2, 5])
    assert len(calls) == 2 and calls[0].hidden_grads is None and calls[0].batch_first
    assert calls[0].lengths.tolist() == lengths
    torch.testing.assert_close(out2, out, atol=0, rtol=0)
    for a, b in zip(gates, calls[0].gates, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert all(c.shape == (4, 6, 3) for c in calls[0].cells)
    # the last step's cell state of each sequence's forward direction is c_n
    last = torch.tensor(lengths) - 1
    torch.testing.assert_close(calls[0].cells[2][torch.arange(4), last], state[1][2], atol=0, rtol=0)
    assert lstm._recordings is None
    with lstm.recording(), pytest.raises(RuntimeError, match="already being recorded"), lstm.recording():
        pass


@pytest.mark.parametrize("backend", PATHS, indirect=True)
def test_hidden_grads_follow_the_batch_first_layout(backend):
    torch.manual_seed(2)
    lstm = LSTM(2, 3, 1, bidirectional=True, backend=backend).double()
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    lengths = [2, 5, 4, 1]
    results = []
    for batch_first in (False, True):
        lstm.batch_first = batch_first
        with lstm.recording(grads=True) as calls:
            out, (h_n, _) = lstm(x.transpose(0, 1) if batch_first else x, lengths=lengths)
            (out.pow(2).sum() + h_n.sum()).backward()
        results.append(calls[0].hidden_grads)
    for time_first, batch_first in zip(*results, strict=True):
        assert time_first.abs().max() > 0
        torch.testing.assert_close(batch_first, time_first.transpose(0, 1), atol=0, rtol=0)
