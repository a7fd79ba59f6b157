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
- Padded batches are sorted by length (longest first), so the sequences still running at step t are
  the first ``batch_sizes[t]`` rows: the loop shrinks the batch as PackedSequence does, instead of
  computing and masking finished rows. The reverse direction runs the same loop over each sequence
  reversed within its own length.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Activation derivatives times a partner, in one pass: grad * s * (1 - s) and grad * (1 - t^2).
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


class _Recurrence(torch.autograd.Function):
    """One layer and direction: the input projection, then h_t, c_t over time; gate rows in (o, i, f, g)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, batch_sizes: list[int] | None):
        T, B, I = x.shape
        H = w_hh.shape[1]
        flat = x.reshape(T * B, I)
        gates = (flat @ w_ih.t() if bias is None else torch.addmm(bias, flat, w_ih.t())).view(T, B, 4 * H)
        # Rows past their length must hold zeros (outputs are zero there; the backward reads them).
        new = x.new_empty if batch_sizes is None else x.new_zeros
        hs, cs, tanh_cs = new(T, B, H), new(T, B, H), new(T, B, H)
        # 0-dim tensors, not Python numbers: a Python scalar costs a conversion per op (twice the op here).
        one, two = x.new_ones(()), x.new_full((), 2.0)
        w_t = w_hh.t()
        h, c = h0, c0
        # Views of every step made once, not indexed inside the loop (each indexing is Python overhead).
        steps = zip(gates.unbind(0), *(part.unbind(0) for part in gates.split(H, dim=2)),
                    hs.unbind(0), cs.unbind(0), tanh_cs.unbind(0), strict=True)
        for t, (a, o, i, f, g, h_t, c_t, tc) in enumerate(steps):
            if batch_sizes is not None and batch_sizes[t] < B:  # finished sequences drop out of the batch
                b = batch_sizes[t]
                a, o, i, f, g, h_t, c_t, tc, h, c = (v[:b] for v in (a, o, i, f, g, h_t, c_t, tc, h, c))
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
            h, c = h_t, c_t
        if batch_sizes is None:
            h_n, c_n = hs[-1].clone(), cs[-1].clone()
        else:  # row j runs while j < batch_sizes[t]: its last step is the count of such t, minus one
            sizes = torch.tensor(batch_sizes, device=x.device).unsqueeze(1)
            rows = torch.arange(B, device=x.device)
            running = sizes > rows  # (T, B)
            gates.mul_(running.unsqueeze(2))  # past a length: zeros, not the projected padding
            last = running.sum(0) - 1
            h_n, c_n = hs[last, rows], cs[last, rows]
        ctx.batch_sizes = batch_sizes
        ctx.set_materialize_grads(False)  # unused outputs (often all but h_n) get None, not a zero tensor
        ctx.save_for_backward(x, gates, hs, cs, tanh_cs, h0, c0, w_ih, w_hh)
        ctx.mark_non_differentiable(gates)
        return hs, h_n, c_n, gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_hs: Tensor, d_hn: Tensor, d_cn: Tensor, _d_gates: Tensor):
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
        steps = list(zip(d_pre.unbind(0), d_pre[..., :H].unbind(0), d_pre[..., H:].view(T, B, 3, H).unbind(0),
                         coef_o.unbind(0), coef[..., H:].view(T, B, 3, H).unbind(0), dh_to_dc.unbind(0),
                         f.unbind(0), strict=True))
        d_hs_steps = d_hs.unbind(0)
        for t in range(T - 1, -1, -1):
            dp, dp_o, dp_ifg, k_o, k_ifg, k_c, f_t = steps[t]
            dh, dc = dh_buf, dc_buf
            b = B if batch_sizes is None else batch_sizes[t]
            if b < B:
                dp, dp_o, dp_ifg, k_o, k_ifg, k_c, f_t, dh, dc = (
                    v[:b] for v in (dp, dp_o, dp_ifg, k_o, k_ifg, k_c, f_t, dh, dc)
                )
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
        return d_x, dh0, dc_buf, d_w_ih, d_w_hh, d_bias, None


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a (T, B, ...) batch within its own length; padding stays in place."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < n, n - 1 - t, t)
    return x.gather(0, index.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x))


def fast_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Run (T, B, I) input through one direction; the same contract as ``reference_layer``.

    With ``lengths``, rows must be sorted longest first (the LSTM module sorts them).
    """
    w_ih, w_hh, b_ih, b_hh = weights
    T = x.shape[0]
    H = w_hh.shape[1]
    if reverse:
        x = reverse_within_lengths(x, lengths)

    def roll(w: Tensor) -> Tensor:  # gate rows (i, f, g, o) -> (o, i, f, g)
        return w.roll(H, dims=0)

    bias = None if b_ih is None else roll(b_ih + b_hh)
    batch_sizes = None if lengths is None else (lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).sum(1).tolist()
    out, h_n, c_n, gates = _Recurrence.apply(x, h0, c0, roll(w_ih), roll(w_hh), bias, batch_sizes)
    gate_acts = None
    if return_gates:
        gate_acts = gates.view(*gates.shape[:2], 4, H)[:, :, [1, 2, 3, 0]]  # back to i, f, g, o
    if reverse:
        out = reverse_within_lengths(out, lengths)
        gate_acts = None if gate_acts is None else reverse_within_lengths(gate_acts, lengths)
    return out, h_n, c_n, gate_acts
