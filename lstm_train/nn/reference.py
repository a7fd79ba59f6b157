"""The reference implementation: one layer, one direction, the cell equations step by step.

It is the yardstick the fast implementation is tested against: plain autograd, no tricks. Padded
sequences are handled with a mask at each step (h = h_new where t < length, else h_prev), so each
sequence's state stops at its true end and the reverse direction starts at its last valid step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cell import lstm_cell


def reference_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Run (T, B, I) input through one direction. Returns ``(out, h_n, c_n, gates)``.

    ``out`` is (T, B, H), zero past each length; ``gates`` is (T, B, 4, H) in i, f, g, o order, or None.
    """
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    xs = x.unbind(0)  # never index x[t] in the loop: its backward would write a full-size zero grad each step
    if lengths is not None:
        valid = (torch.arange(x.shape[0], device=x.device)[:, None] < lengths.to(x.device)[None, :]).unsqueeze(-1)
        masks = valid.unbind(0)
    h, c = h0, c0
    outs: list[Tensor] = [x] * len(xs)
    gates: list[Tensor] = [x] * len(xs)
    for t in steps:
        h_new, c_new, g = lstm_cell(xs[t], h, c, *weights)
        if lengths is None:
            h, c = h_new, c_new
            outs[t] = h
        else:
            m = masks[t]
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            outs[t] = h_new * m
        if return_gates:
            gates[t] = torch.stack(g, dim=-2)
            if lengths is not None:
                gates[t] = gates[t] * m.unsqueeze(-1)
    gate_acts = torch.stack(gates).detach() if return_gates else None
    return torch.stack(outs), h, c, gate_acts
