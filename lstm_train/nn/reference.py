"""The reference implementation: one layer, one direction, the cell equations step by step.

:func:`reference_layer` runs the plain cell (cell.py's ``lstm_cell``); :func:`cell_layer` runs any
:class:`~lstm_train.nn.variants.Cell` (the variants, your own cell) with the recurrent regularisers.

It is the yardstick the fast implementation is tested against: plain autograd, no tricks. Padded
sequences are handled with a mask at each step (h = h_new where t < length, else h_prev), so each
sequence's state stops at its true end and the reverse direction starts at its last valid step.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from .cell import lstm_cell
from .variants import Cell, Noise, Params

# One layer and direction's weights, in torch.nn.LSTM's order: w_ih, w_hh, b_ih, b_hh, w_hr (None if absent).
LayerWeights = tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]


def reference_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: LayerWeights,
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
    dh_sink: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Run (T, B, I) input through one direction. Returns ``(out, h_n, c_n, gates, cells)``.

    ``out`` is (T, B, P) (P: proj_size, else H), zero past each length; with ``return_gates``, ``gates`` is
    (T, B, 4, H) in i, f, g, o order and ``cells`` the cell states c_t, (T, B, H), both detached and zero past
    each length (else None). ``dh_sink``, a (T, B, P) tensor, receives dL/dh_t of every step during the backward.
    """
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    xs = x.unbind(0)  # never index x[t] in the loop: its backward would write a full-size zero grad each step
    if lengths is not None:
        valid = (torch.arange(x.shape[0], device=x.device)[:, None] < lengths.to(x.device)[None, :]).unsqueeze(-1)
        masks = valid.unbind(0)
    h, c = h0, c0
    outs: list[Tensor] = [x] * len(xs)
    gates: list[Tensor] = [x] * len(xs)
    cells: list[Tensor] = [x] * len(xs)
    for t in steps:
        h_new, c_new, g = lstm_cell(xs[t], h, c, *weights)
        if dh_sink is not None and h_new.requires_grad:
            # h_new's total gradient (past a length the masks make it zero) is dL/dh_t
            h_new.register_hook(partial(_store, dh_sink, t))
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
            cells[t] = c_new
            if lengths is not None:
                gates[t] = gates[t] * m.unsqueeze(-1)
                cells[t] = c_new * m
    if not return_gates:
        return torch.stack(outs), h, c, None, None
    return torch.stack(outs), h, c, torch.stack(gates).detach(), torch.stack(cells).detach()


def _store(sink: Tensor, t: int, grad: Tensor) -> None:
    sink[t] = grad.detach()  # a recorded value, not part of a graph (a double backward may be running)


def layer_params(weights: LayerWeights, own: Params) -> Params:
    """A :class:`Cell`'s view of one layer and direction: torch's weights by name (those it has), and its own."""
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return {**{kind: w for kind, w in zip(kinds, weights, strict=True) if w is not None}, **own}


def cell_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: LayerWeights,
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
    dh_sink: Tensor | None = None,
    *,
    cell: Cell,
    own: Params,
    noise: Noise,
    xp: Tensor | None = None,
    zoneout_seed: tuple[int, int] | None = None,
    recurrent_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Any :class:`~lstm_train.nn.variants.Cell` over (T, B, I) input, one direction; the contract of
    :func:`reference_layer`, plus the cell, its own parameters (``own``) and the regularisers (``noise``).
    Each step projects its input (``cell.project``), applies recurrent dropout to the h entering it, runs
    ``cell.step`` and zones out the new state. ``xp``: the input projection of every step, (T, B, 4H), when
    the caller has computed it at once (backend="fast"); ``zoneout_seed``, the seed of zoneout's masks
    (``Noise.zoneout_masks``), and ``recurrent_mask``, recurrent dropout's (B, P), when given (the compiled kernel's
    double backward replays its own); else drawn here in the kernel's order (``Noise.zoneout_seed``, then
    ``Noise.recurrent_mask``), so that a seed gives every path the same masks."""
    params = layer_params(weights, own)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    inputs = (x if xp is None else xp).unbind(0)
    if lengths is not None:
        valid = (torch.arange(x.shape[0], device=x.device)[:, None] < lengths.to(x.device)[None, :]).unsqueeze(-1)
        masks = valid.unbind(0)
    seed = noise.zoneout_seed() if zoneout_seed is None else zoneout_seed
    # all steps' masks, in the kernel's step order (a reverse direction's steps run backwards within each length)
    zoneout_masks = noise.zoneout_masks(seed, x.new_empty(x.shape[0], x.shape[1], c0.shape[1]), h0.shape[1])
    if reverse:
        zoneout_masks = tuple(None if z is None else reverse_within_lengths(z, lengths) for z in zoneout_masks)
    drop = noise.recurrent_mask(h0) if recurrent_mask is None else recurrent_mask
    h, c = h0, c0
    prev = h0.new_zeros(c0.shape[0], 4, c0.shape[1]) if cell.reads_previous_gates else None
    outs: list[Tensor] = [x] * len(inputs)
    gates: list[Tensor] = [x] * len(inputs)
    cells: list[Tensor] = [x] * len(inputs)
    for t in steps:
        step_xp = cell.project(inputs[t], params) if xp is None else inputs[t]
        h_new, c_new, g = cell.step(step_xp, h if drop is None else h * drop, c, prev, params)
        keep_c, keep_h = (None if z is None else z[t] for z in zoneout_masks)
        c_new = noise.zoneout(c, c_new, keep_c)
        h_new = noise.zoneout(h, h_new, keep_h)
        if dh_sink is not None and h_new.requires_grad:
            h_new.register_hook(partial(_store, dh_sink, t))
        if lengths is None:
            h, c, prev = h_new, c_new, g if prev is not None else None
            outs[t] = h
        else:
            m = masks[t]
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            if prev is not None:
                prev = torch.where(m.unsqueeze(-1), g, prev)
            outs[t] = h_new * m
        if return_gates:
            gates[t] = g if lengths is None else g * m.unsqueeze(-1)
            cells[t] = c_new if lengths is None else c_new * m
    if not return_gates:
        return torch.stack(outs), h, c, None, None
    return torch.stack(outs), h, c, torch.stack(gates).detach(), torch.stack(cells).detach()


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a (T, B, ...) batch within its own length; padding stays in place."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < n, n - 1 - t, t)
    return x.gather(0, index.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x))
