"""The fast implementation: the same equations, with the time loop laid out for speed.

What makes it fast (measured in scripts/bench_lstm.py; see also shared notes on performance):
- The input projection of the whole sequence is one GEMM per layer and direction, outside the loop.
- The loop runs inside an autograd.Function with a hand-written backward (BPTT), so autograd records
  one node per layer instead of a dozen per step, and the weight gradient is one GEMM over all steps.
- Gate rows are rolled once per call from torch's (i, f, g, o) to (o, i, f, g): the three sigmoid gates
  are then contiguous (one sigmoid call) and so are i, f, g, whose gradients are all "dc times
  something" (one broadcast multiply in the backward).
- Per step, every op writes into preallocated buffers (``out=`` and in-place), no per-step allocation.
- tanh is computed as 2 sigmoid(2x) - 1 (see the loop); in the backward, every factor that does not
  depend on the incoming gradient is computed for all steps at once, so the loop keeps one GEMM and
  four small elementwise ops per step.
- Without autograd (no_grad / inference_mode: sampling, decoding, evaluation) the same loop runs as a plain
  function, not an autograd.Function, and the rolled weights come from the LSTM module's cache, so a T=1
  call (one decoding step) is a dozen small ops per layer and nothing the size of the weights is copied.
- Padded batches are sorted by length (longest first), so the sequences still running at step t are
  the first ``batch_sizes[t]`` rows: the loop shrinks the batch as PackedSequence does, instead of
  computing and masking finished rows. The reverse direction runs the same loop over each sequence
  reversed within its own length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# Called by the backward with dL/dh_t of every step, (T, B, H) in the loop's time and batch order.
DhCallback = Callable[[Tensor], None]

# Activation derivatives times a partner, in one pass: grad * s * (1 - s) and grad * (1 - t^2).
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def _recurrence(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor | None, batch_sizes: list[int] | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward maths, with or without autograd: ``(hs, h_n, c_n, gates, cs, tanh_cs)``.

    The one copy of it: training runs it inside :class:`_Recurrence`, inference (grad mode off) calls it
    directly, so both give the same bits. Without ``batch_sizes``, h_n and c_n are views of hs and cs.
    """
    T, B, I = x.shape
    H = w_hh.shape[1]
    flat = x.reshape(T * B, I)
    gates = (flat @ w_ih.t() if bias is None else torch.addmm(bias, flat, w_ih.t())).view(T, B, 4 * H)
    # Rows past their length must hold zeros (outputs are zero there; the backward reads them).
    new = x.new_empty if batch_sizes is None else x.new_zeros
    hs, cs, tanh_cs = new(T, B, H), new(T, B, H), new(T, B, H)
    w_t, consts = w_hh.t(), _constants(x)
    if T == 1 and batch_sizes is None:  # one step, as decoding calls it: none of the loop's bookkeeping
        a, h_t, c_t = gates[0], hs[0], cs[0]
        _step(a, a.split(H, dim=1), h0, c0, (h_t, c_t, tanh_cs[0]), w_t, consts)
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
    for t, (a, o, i, f, g, h_t, c_t, tc) in enumerate(steps):
        if batch_sizes is not None and batch_sizes[t] < B:  # finished sequences drop out of the batch
            b = batch_sizes[t]
            a, o, i, f, g, h_t, c_t, tc, h, c = (v[:b] for v in (a, o, i, f, g, h_t, c_t, tc, h, c))
        _step(a, (o, i, f, g), h, c, (h_t, c_t, tc), w_t, consts)
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
) -> None:
    """One time step, in place: ``a`` (B, 4H) holds the projected input and becomes the gate activations
    (``quarters``: its o, i, f, g views); ``out`` = (h_t, c_t, tanh c_t) are written from the previous h and c;
    ``consts``: :func:`_constants`."""
    o, i, f, g = quarters
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
    torch.mul(o, tc, out=h_t)


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
    """One layer and direction: the input projection, then h_t, c_t over time; gate rows in (o, i, f, g)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, batch_sizes: list[int] | None, on_dh: DhCallback | None):
        hs, h_n, c_n, gates, cs, tanh_cs = _recurrence(x, h0, c0, w_ih, w_hh, bias, batch_sizes)
        if batch_sizes is None:  # views of hs and cs as they come: an autograd output must not be one
            h_n, c_n = h_n.clone(), c_n.clone()
        ctx.batch_sizes = batch_sizes
        ctx.on_dh = on_dh
        ctx.set_materialize_grads(False)  # unused outputs (often all but h_n) get None, not a zero tensor
        ctx.save_for_backward(x, gates, hs, cs, tanh_cs, h0, c0, w_ih, w_hh)
        ctx.mark_non_differentiable(gates, cs)
        return hs, h_n, c_n, gates, cs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_hs: Tensor, d_hn: Tensor, d_cn: Tensor, _d_gates: Tensor, _d_cs: Tensor):
        x, gates, hs, cs, tanh_cs, h0, c0, w_ih, w_hh = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        T, B, G = gates.shape
        H = G // 4
        o, i, f, g = gates.split(H, dim=2)
        # Everything that does not depend on the incoming gradient, for all steps at once, one pass each:
        # d pre-activation = (dh or dc) * partner * activation'; coef holds partner * activation'.
        coef = torch.empty_like(gates)
        coef_o, coef_i, coef_f, coef_g = coef.split(H, dim=2)
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
                d_pre[..., :H].unbind(0),
                d_pre[..., H:].view(T, B, 3, H).unbind(0),
                coef_o.unbind(0),
                coef[..., H:].view(T, B, 3, H).unbind(0),
                dh_to_dc.unbind(0),
                f.unbind(0),
                strict=True,
            )
        )
        d_hs_steps = d_hs.unbind(0)
        dh_steps = None if ctx.on_dh is None else torch.zeros_like(hs)  # only when recorded: see on_dh
        for t in range(T - 1, -1, -1):
            dp, dp_o, dp_ifg, k_o, k_ifg, k_c, f_t = steps[t]
            dh, dc = dh_buf, dc_buf
            b = B if batch_sizes is None else batch_sizes[t]
            if b < B:
                dp, dp_o, dp_ifg, k_o, k_ifg, k_c, f_t, dh, dc = (
                    v[:b] for v in (dp, dp_o, dp_ifg, k_o, k_ifg, k_c, f_t, dh, dc)
                )
            if dh_steps is not None:  # dh is now the total dL/dh_t: from the output, step t+1 and h_n
                dh_steps[t, :b] = dh
            dc.addcmul_(dh, k_c)
            torch.mul(dh, k_o, out=dp_o)
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
        d_w_ih = flat_d.t() @ x.reshape(T * B, -1) if need[3] else None
        # d W_hh = sum over t of d_pre[t]^T h_{t-1}: one GEMM over all steps (plus step 0's, from h0)
        d_w_hh = torch.addmm(d_pre[0].t() @ h0, d_pre[1:].reshape(-1, G).t(), hs[:-1].reshape(-1, H))
        d_bias = flat_d.sum(0) if need[5] else None
        if dh_steps is not None:
            ctx.on_dh(dh_steps)
        return d_x, dh0, dc_buf, d_w_ih, d_w_hh, d_bias, None, None


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a (T, B, ...) batch within its own length; padding stays in place."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < n, n - 1 - t, t)
    return x.gather(0, index.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x))


Prepared = tuple[Tensor, Tensor, Tensor | None]  # w_ih, w_hh and the summed bias, gate rows in (o, i, f, g)


def prepare_weights(weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None]) -> Prepared:
    """A layer's weights as the loop wants them: rows rolled from torch's (i, f, g, o) to (o, i, f, g), the two
    biases summed. Differentiable; without autograd the LSTM module caches the result across calls."""
    w_ih, w_hh, b_ih, b_hh = weights
    H = w_hh.shape[1]
    bias = None if b_ih is None else (b_ih + b_hh).roll(H, dims=0)
    return w_ih.roll(H, dims=0), w_hh.roll(H, dims=0), bias


def fast_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
    dh_sink: Tensor | None = None,
    prepared: Prepared | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Run (T, B, I) input through one direction; the same contract as ``reference_layer``.

    With ``lengths``, rows must be sorted longest first (the LSTM module sorts them). ``prepared``:
    ``prepare_weights(weights)`` made earlier (the LSTM module's cache for calls without autograd).
    With grad mode off the loop runs as a plain function, skipping the autograd.Function and what it keeps
    for the backward; the maths and so the numbers are the same.
    """
    T = x.shape[0]
    H = weights[1].shape[1]
    if reverse:
        x = reverse_within_lengths(x, lengths)
    w_ih, w_hh, bias = prepare_weights(weights) if prepared is None else prepared
    batch_sizes = None if lengths is None else (lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).sum(1).tolist()
    if torch.is_grad_enabled():
        on_dh = None
        if dh_sink is not None:

            def on_dh(dh_steps: Tensor) -> None:  # the loop's steps back to the input's time order
                dh_sink.copy_(reverse_within_lengths(dh_steps, lengths) if reverse else dh_steps)

        out, h_n, c_n, gates, cs = _Recurrence.apply(x, h0, c0, w_ih, w_hh, bias, batch_sizes, on_dh)
    else:
        out, h_n, c_n, gates, cs, _ = _recurrence(x, h0, c0, w_ih, w_hh, bias, batch_sizes)
    gate_acts = cells = None
    if return_gates:
        gate_acts = gates.view(*gates.shape[:2], 4, H)[:, :, [1, 2, 3, 0]]  # back to i, f, g, o
        cells = cs.clone()  # a copy: cs is saved for the backward
    if reverse:
        out = reverse_within_lengths(out, lengths)
        if return_gates:
            gate_acts, cells = (reverse_within_lengths(v, lengths) for v in (gate_acts, cells))
    return out, h_n, c_n, gate_acts, cells
