"""The fast implementation: the same equations, with the time loop laid out for speed.

What makes it fast (measured in scripts/bench_lstm.py; see also shared notes on performance):
- The input projection of the whole sequence is one GEMM per layer and direction, outside the loop.
- The loop runs inside an autograd.Function with a hand-written backward (BPTT), so autograd records
  one node per layer instead of a dozen per step, and the weight gradient is one GEMM over all steps.
- The weights are used as the module holds them, in torch's gate order (i, f, g, o): nothing is copied or
  cached, so a result can never be stale. One sigmoid call covers all four gates (g's tanh through a
  sigmoid, below), and i, f, g, whose gradients are all "dc times something", are contiguous (one
  broadcast multiply in the backward).
- Per step, every op writes into preallocated buffers (``out=`` and in-place), no per-step allocation.
- tanh is computed as 2 sigmoid(2x) - 1 (see the loop); in the backward, every factor that does not
  depend on the incoming gradient is computed for all steps at once, so the loop keeps one GEMM and
  four small elementwise ops per step.
- Without autograd (no_grad / inference_mode: sampling, decoding, evaluation) the same loop runs as a plain
  function, not an autograd.Function, so a T=1 call (one decoding step) is a dozen small ops per layer and
  nothing the size of the weights is copied.
- Padded batches are sorted by length (longest first), so the sequences still running at step t are
  the first ``batch_sizes[t]`` rows: the loop shrinks the batch as PackedSequence does, instead of
  computing and masking finished rows. The reverse direction runs the same loop over each sequence
  reversed within its own length.
- A projection (``proj_size``) adds one GEMM per step forward (h = W_hr (o * tanh c)) and one backward
  (dL/d(o * tanh c) = dL/dh W_hr); dW_hr is one GEMM over all steps.

Where the hand-written backward cannot serve, the plain autograd maths of ``reference.py`` does: see
:func:`fast_layer_applies` (torch.func transforms, forward-mode AD, tracing) and
:func:`differentiable_backward` (a double backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad

from .reference import LayerWeights, cell_layer, layer_params, reference_layer, reverse_within_lengths
from .variants import Cell, Noise, Params

# Called by the backward with dL/dh_t of every step, (T, B, P) in the loop's time and batch order (P: h's size).
DhCallback = Callable[[Tensor], None]

# Activation derivatives times a partner, in one pass: grad * s * (1 - s) and grad * (1 - t^2).
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def _recurrence(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Tensor | None,
    w_hr: Tensor | None,
    batch_sizes: list[int] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward maths, with or without autograd: ``(hs, h_n, c_n, gates, cs, tanh_cs)``.

    The one copy of it: training runs it inside :class:`_Recurrence`, inference (grad mode off) calls it
    directly, so both give the same bits. Without ``batch_sizes``, h_n and c_n are views of hs and cs.
    """
    T, B, I = x.shape
    H = w_hh.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    flat = x.reshape(T * B, I)
    gates = (flat @ w_ih.t() if bias is None else torch.addmm(bias, flat, w_ih.t())).view(T, B, 4 * H)
    # Rows past their length must hold zeros (outputs are zero there; the backward reads them).
    new = x.new_empty if batch_sizes is None else x.new_zeros
    hs, cs, tanh_cs = new(T, B, P), new(T, B, H), new(T, B, H)
    w_t, consts = w_hh.t(), _constants(x)
    proj = None if w_hr is None else (w_hr.t(), x.new_empty(B, H))  # W_hr^T and a step's o * tanh(c)
    if T == 1 and batch_sizes is None:  # one step, as decoding calls it: none of the loop's bookkeeping
        a, h_t, c_t = gates[0], hs[0], cs[0]
        _step(a, a.split(H, dim=1), h0, c0, (h_t, c_t, tanh_cs[0]), w_t, consts, proj)
        return hs, h_t, c_t, gates, cs, tanh_cs
    h, c = h0, c0
    # Views of every step made once, not indexed inside the loop (each indexing is Python overhead).
    steps = zip(
        gates.unbind(0),
        *(part.unbind(0) for part in gates.split(H, dim=2)),
        hs.unbind(0),
        cs.unbind(0),
        tanh_cs.unbind(0),
        strict=True,
    )
    step_proj = proj
    for t, (a, i, f, g, o, h_t, c_t, tc) in enumerate(steps):
        if batch_sizes is not None and batch_sizes[t] < B:  # finished sequences drop out of the batch
            b = batch_sizes[t]
            a, i, f, g, o, h_t, c_t, tc, h, c = (v[:b] for v in (a, i, f, g, o, h_t, c_t, tc, h, c))
            step_proj = None if proj is None else (proj[0], proj[1][:b])
        _step(a, (i, f, g, o), h, c, (h_t, c_t, tc), w_t, consts, step_proj)
        h, c = h_t, c_t
    if batch_sizes is None:
        h_n, c_n = hs[-1], cs[-1]
    else:  # row j runs while j < batch_sizes[t]: its last step is the count of such t, minus one
        sizes = torch.tensor(batch_sizes, device=x.device).unsqueeze(1)
        rows = torch.arange(B, device=x.device)
        running = sizes > rows  # (T, B)
        gates.mul_(running.unsqueeze(2))  # past a length: zeros, not the projected padding
        last = running.sum(0) - 1
        h_n, c_n = hs[last, rows], cs[last, rows]
    return hs, h_n, c_n, gates, cs, tanh_cs


def _step(
    a: Tensor,
    quarters: Sequence[Tensor],
    h: Tensor,
    c: Tensor,
    out: Sequence[Tensor],
    w_t: Tensor,
    consts: tuple[Tensor, Tensor],
    proj: tuple[Tensor, Tensor] | None = None,
) -> None:
    """One time step, in place: ``a`` (B, 4H) holds the projected input and becomes the gate activations
    (``quarters``: its i, f, g, o views); ``out`` = (h_t, c_t, tanh c_t) are written from the previous h and c;
    ``consts``: :func:`_constants`; ``proj``: W_hr^T and a (B, H) buffer for o * tanh(c_t), or None."""
    i, f, g, o = quarters
    h_t, c_t, tc = out
    one, two = consts
    a.addmm_(h, w_t)  # pre-activations: the projected input plus W_hh h_{t-1}
    # tanh(x) = 2 sigmoid(2x) - 1: on CPU torch.tanh is ~5x slower than torch.sigmoid per element
    # and goes multi-threaded from 2048 elements, which costs more than it saves at these sizes.
    g.mul_(two)
    a.sigmoid_()
    g.mul_(two).sub_(one)
    torch.mul(f, c, out=c_t)
    c_t.addcmul_(i, g)
    torch.add(c_t, c_t, out=tc).sigmoid_().mul_(two).sub_(one)
    if proj is None:
        torch.mul(o, tc, out=h_t)
    else:  # h_t = W_hr (o * tanh c_t)
        w_hr_t, m = proj
        torch.mul(o, tc, out=m)
        torch.mm(m, w_hr_t, out=h_t)


_CONSTANTS: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def _constants(x: Tensor) -> tuple[Tensor, Tensor]:
    """1 and 2 as 0-dim tensors of x's dtype and device, made once (a Python scalar costs a conversion per op,
    twice the op here). Made outside inference mode, so they are ordinary tensors wherever they are used."""
    key = (x.dtype, x.device)
    if key not in _CONSTANTS:
        with torch.inference_mode(False), torch.no_grad():
            _CONSTANTS[key] = (
                torch.ones((), dtype=x.dtype, device=x.device),
                torch.full((), 2.0, dtype=x.dtype, device=x.device),
            )
    return _CONSTANTS[key]


class _Recurrence(torch.autograd.Function):
    """One layer and direction: the input projection, then h_t, c_t over time; gate rows in (i, f, g, o)."""

    @staticmethod
    def forward(
        ctx,
        x,
        h0,
        c0,
        w_ih,
        w_hh,
        bias,
        w_hr,
        lengths: Tensor | None,
        batch_sizes: list[int] | None,
        on_dh: DhCallback | None,
    ):
        hs, h_n, c_n, gates, cs, tanh_cs = _recurrence(x, h0, c0, w_ih, w_hh, bias, w_hr, batch_sizes)
        if batch_sizes is None:  # views of hs and cs as they come: an autograd output must not be one
            h_n, c_n = h_n.clone(), c_n.clone()
        ctx.lengths = lengths
        ctx.batch_sizes = batch_sizes
        ctx.on_dh = on_dh
        ctx.set_materialize_grads(False)  # unused outputs (often all but h_n) get None, not a zero tensor
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, bias, w_hr, gates, hs, cs, tanh_cs)
        ctx.mark_non_differentiable(gates, cs)
        return hs, h_n, c_n, gates, cs

    @staticmethod
    def backward(ctx, d_hs: Tensor, d_hn: Tensor, d_cn: Tensor, _d_gates: Tensor, _d_cs: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the backward must itself be differentiable
            return differentiable_backward(ctx, d_hs, d_hn, d_cn)
        x, h0, c0, w_ih, w_hh, _bias, w_hr, gates, hs, cs, tanh_cs = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        T, B, G = gates.shape
        H, P = G // 4, hs.shape[2]
        i, f, g, o = gates.split(H, dim=2)
        # Everything that does not depend on the incoming gradient, for all steps at once, one pass each:
        # d pre-activation = (dh or dc) * partner * activation'; coef holds partner * activation'.
        coef = torch.empty_like(gates)
        coef_i, coef_f, coef_g, coef_o = coef.split(H, dim=2)
        _sigmoid_backward(tanh_cs, o, grad_input=coef_o)  # d o = dh * tanh(c) * o'
        _sigmoid_backward(g, i, grad_input=coef_i)  # d i = dc * g * i'
        _sigmoid_backward(cs[:-1], f[1:], grad_input=coef_f[1:])  # d f = dc * c_prev * f'
        _sigmoid_backward(c0, f[0], grad_input=coef_f[0])
        _tanh_backward(i, g, grad_input=coef_g)  # d g = dc * i * g'
        dh_to_dc = _tanh_backward(o, tanh_cs, grad_input=torch.empty_like(o))  # dc += dh * o * tanh'(c)

        d_pre = torch.zeros_like(gates) if batch_sizes is not None else torch.empty_like(gates)
        if d_hs is None:
            d_hs = torch.zeros_like(hs)
        if d_hn is None:
            d_hn = torch.zeros_like(h0)
        dh_buf = d_hs[-1] + d_hn  # a row's d h_n and d c_n enter when the loop reaches its last step
        dc_buf = torch.zeros_like(c0) if d_cn is None else d_cn.clone()
        steps = list(
            zip(
                d_pre.unbind(0),
                d_pre[..., : 3 * H].view(T, B, 3, H).unbind(0),
                d_pre[..., 3 * H :].unbind(0),
                coef[..., : 3 * H].view(T, B, 3, H).unbind(0),
                coef_o.unbind(0),
                dh_to_dc.unbind(0),
                f.unbind(0),
                strict=True,
            )
        )
        d_hs_steps = d_hs.unbind(0)
        # dL/dh_t of every step: recorded (see on_dh), and with a projection the factor of dW_hr
        dh_steps = None if ctx.on_dh is None and w_hr is None else torch.zeros_like(hs)
        dm_buf = None if w_hr is None else h0.new_empty(B, H)  # dL/d(o * tanh c_t), one step's
        for t in range(T - 1, -1, -1):
            dp, dp_ifg, dp_o, k_ifg, k_o, k_c, f_t = steps[t]
            dh, dc = dh_buf, dc_buf
            b = B if batch_sizes is None else batch_sizes[t]
            if b < B:
                dp, dp_ifg, dp_o, k_ifg, k_o, k_c, f_t, dh, dc = (
                    v[:b] for v in (dp, dp_ifg, dp_o, k_ifg, k_o, k_c, f_t, dh, dc)
                )
            if dh_steps is not None:  # dh is now the total dL/dh_t: from the output, step t+1 and h_n
                dh_steps[t, :b] = dh
            dm = dh if w_hr is None else torch.mm(dh, w_hr, out=dm_buf[:b])  # back through h = W_hr m
            dc.addcmul_(dm, k_c)
            torch.mul(dm, k_o, out=dp_o)
            torch.mul(dc.unsqueeze(1), k_ifg, out=dp_ifg)
            dc.mul_(f_t)  # now dc_{t-1}
            if t > 0:
                torch.addmm(d_hs_steps[t - 1][:b] if b < B else d_hs_steps[t - 1], dp, w_hh, out=dh)  # dh_{t-1}
                if batch_sizes is not None and batch_sizes[t - 1] > b:  # sequences whose last step is t-1
                    ending = slice(b, batch_sizes[t - 1])
                    torch.add(d_hs[t - 1, ending], d_hn[ending], out=dh_buf[ending])
        flat_d = d_pre.view(T * B, G)
        need = ctx.needs_input_grad
        d_x = (flat_d @ w_ih).view(x.shape) if need[0] else None
        dh0 = d_pre[0] @ w_hh
        d_w_ih = flat_d.t() @ x.reshape(T * B, x.shape[2]) if need[3] else None
        # d W_hh = sum over t of d_pre[t]^T h_{t-1}: one GEMM over all steps (plus step 0's, from h0)
        d_w_hh = torch.addmm(d_pre[0].t() @ h0, d_pre[1:].reshape(-1, G).t(), hs[:-1].reshape(-1, P))
        d_bias = flat_d.sum(0) if need[5] else None
        d_w_hr = None
        if w_hr is not None and need[6]:  # d W_hr = sum over t of dh_t^T (o_t * tanh c_t), zero past lengths
            d_w_hr = dh_steps.view(T * B, P).t() @ (o * tanh_cs).view(T * B, H)
        if ctx.on_dh is not None:
            ctx.on_dh(dh_steps)
        return d_x, dh0, dc_buf, d_w_ih, d_w_hh, d_bias, d_w_hr, None, None, None


def differentiable_backward(ctx, d_hs: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None) -> tuple:
    """The backward when autograd is to record it (``create_graph=True``: gradient penalties, Hessian-vector
    products, gradgradcheck): the reference maths run again on the saved inputs and autograd differentiates
    them with ``create_graph``, so derivatives of any order are right. The hand-written backward is the fast
    path for the usual first-order case; it writes into buffers in place and has no graph of its own."""
    x, h0, c0, w_ih, w_hh, bias, w_hr = ctx.saved_tensors[:7]
    inputs = (x, h0, c0, w_ih, w_hh, bias, w_hr)
    wanted = [k for k, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[k]]
    result: list[Tensor | None] = [None] * (len(inputs) + 3)
    sink = None if ctx.on_dh is None else x.new_zeros(x.shape[0], x.shape[1], h0.shape[1])
    with torch.enable_grad():
        weights = (w_ih, w_hh, bias, None, w_hr)  # bias is already b_ih + b_hh
        hs, h_n, c_n, _, _ = reference_layer(x, h0, c0, weights, ctx.lengths, False, False, sink)
        pairs = [(out, grad) for out, grad in ((hs, d_hs), (h_n, d_hn), (c_n, d_cn)) if grad is not None]
        if pairs and wanted:
            outs, grads = zip(*pairs, strict=True)
            found = torch.autograd.grad(
                outs, [inputs[k] for k in wanted], grads, create_graph=True, allow_unused=True
            )
            for k, grad in zip(wanted, found, strict=True):
                result[k] = grad
    if sink is not None:
        ctx.on_dh(sink)
    return tuple(result)


def fast_layer_applies() -> bool:
    """Whether the hand-written path can serve the current call. Not under torch.func transforms (grad, vmap,
    jacrev, jvp...), forward-mode AD or tracing (torch.compile, torch.export, torch.jit.trace): its
    autograd.Function has no forward derivative or batching rule, and its in-place loop is not what a traced
    graph should hold. There the LSTM runs the reference's plain autograd maths, which all of them support."""
    return not (
        torch._C._are_functorch_transforms_active()
        or forward_ad._current_level >= 0  # inside a forward_ad.dual_level()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
    )


def rows_per_step(lengths: Tensor, T: int) -> list[int]:
    """How many rows (sorted longest first) are still running at each of the T steps."""
    return (lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).sum(1).tolist()


def dh_callback(dh_sink: Tensor | None, lengths: Tensor | None, reverse: bool) -> DhCallback | None:
    """What the backward calls with dL/dh of every step: it fills ``dh_sink`` in the input's time order."""
    if dh_sink is None:
        return None

    def on_dh(dh_steps: Tensor) -> None:  # the loop's steps back to the input's time order
        dh_sink.copy_(reverse_within_lengths(dh_steps, lengths) if reverse else dh_steps)

    return on_dh


def fast_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: LayerWeights,
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
    dh_sink: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Run (T, B, I) input through one direction; the same contract as ``reference_layer``.

    With ``lengths``, rows must be sorted longest first (the LSTM module sorts them). With grad mode off the
    loop runs as a plain function, skipping the autograd.Function and what it keeps for the backward; the
    maths and so the numbers are the same.
    """
    T = x.shape[0]
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    H = w_hh.shape[0] // 4
    if reverse:
        x = reverse_within_lengths(x, lengths)
    bias = None if b_ih is None else b_ih + b_hh  # 4H numbers: summed per call, never kept
    batch_sizes = None if lengths is None else rows_per_step(lengths, T)
    if torch.is_grad_enabled():
        on_dh = dh_callback(dh_sink, lengths, reverse)
        out, h_n, c_n, gates, cs = _Recurrence.apply(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, batch_sizes, on_dh)
    else:
        out, h_n, c_n, gates, cs, _ = _recurrence(x, h0, c0, w_ih, w_hh, bias, w_hr, batch_sizes)
    gate_acts = cells = None
    if return_gates:  # copies: gates and cs are saved for the backward
        gate_acts = gates.view(*gates.shape[:2], 4, H).clone()
        cells = cs.clone()
    if reverse:
        out = reverse_within_lengths(out, lengths)
        if return_gates:
            gate_acts, cells = (reverse_within_lengths(v, lengths) for v in (gate_acts, cells))
    return out, h_n, c_n, gate_acts, cells


def fast_cell_layer(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Any cell (a variant, your own) through autograd, the input projection of all steps in one GEMM (and,
    with layer norm, one normalisation) before the loop; the contract of ``reference.cell_layer``."""
    xp = cell.project(x, layer_params(weights, own))
    return cell_layer(x, h0, c0, weights, lengths, reverse, return_gates, dh_sink, cell=cell, own=own, noise=noise,
                      xp=xp)
