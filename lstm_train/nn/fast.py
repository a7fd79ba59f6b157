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
    """h_t, c_t over time for pre-projected gates ``xp`` (T, B, 4H) in internal (o, i, f, g) order."""

    @staticmethod
    def forward(ctx, xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, batch_sizes: list[int] | None):
        T, B, G = xp.shape
        H = G // 4
        # Rows past their length must hold zeros (outputs are zero there; the backward reads them).
        new = xp.new_empty if batch_sizes is None else xp.new_zeros
        gates, hs, cs, tanh_cs = new(T, B, G), new(T, B, H), new(T, B, H), new(T, B, H)
        w_t = w_hh.t()
        h, c = h0, c0
        for t, (x_t, a, h_t, c_t, tc) in enumerate(
            zip(xp.unbind(0), gates.unbind(0), hs.unbind(0), cs.unbind(0), tanh_cs.unbind(0), strict=True)
        ):
            if batch_sizes is not None and batch_sizes[t] < B:
                b = batch_sizes[t]
                x_t, a, h_t, c_t, tc, h, c = x_t[:b], a[:b], h_t[:b], c_t[:b], tc[:b], h[:b], c[:b]
            torch.addmm(x_t, h, w_t, out=a)
            o, i, f, g = a.split(H, dim=1)
            # tanh(x) = 2 sigmoid(2x) - 1: on CPU torch.tanh is ~5x slower than torch.sigmoid per element
            # and goes multi-threaded from 2048 elements, which costs more than it saves at these sizes.
            g.mul_(2)
            a.sigmoid_()
            g.mul_(2).sub_(1)
            torch.mul(f, c, out=c_t)
            c_t.addcmul_(i, g)
            torch.mul(c_t, 2, out=tc).sigmoid_().mul_(2).sub_(1)
            torch.mul(o, tc, out=h_t)
            h, c = h_t, c_t
        if batch_sizes is None:
            h_n, c_n = hs[-1].clone(), cs[-1].clone()
        else:  # row j runs while j < batch_sizes[t]: its last step is the count of such t, minus one
            rows = torch.arange(B, device=xp.device)
            last = (torch.tensor(batch_sizes, device=xp.device).unsqueeze(1) > rows).sum(0) - 1
            h_n, c_n = hs[last, rows], cs[last, rows]
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(gates, hs, cs, tanh_cs, h0, c0, w_hh)
        ctx.mark_non_differentiable(gates)
        return hs, h_n, c_n, gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_hs: Tensor, d_hn: Tensor, d_cn: Tensor, _d_gates: Tensor):
        gates, hs, cs, tanh_cs, h0, c0, w_hh = ctx.saved_tensors
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
        dh_buf = d_hs[-1] + d_hn  # a row's d h_n and d c_n enter when the loop reaches its last step
        dc_buf = d_cn.clone()
        for t in range(T - 1, -1, -1):
            b = B if batch_sizes is None else batch_sizes[t]
            dh, dc, dp = dh_buf[:b], dc_buf[:b], d_pre[t, :b]
            dc.addcmul_(dh, dh_to_dc[t, :b])
            torch.mul(dh, coef_o[t, :b], out=dp[:, :H])
            torch.mul(dc.unsqueeze(1), coef[t, :b, H:].view(b, 3, H), out=dp[:, H:].view(b, 3, H))
            dc.mul_(f[t, :b])  # now dc_{t-1}
            if t > 0:
                torch.addmm(d_hs[t - 1, :b], dp, w_hh, out=dh)  # dh_{t-1}
                if batch_sizes is not None and batch_sizes[t - 1] > b:  # sequences whose last step is t-1
                    ending = slice(b, batch_sizes[t - 1])
                    torch.add(d_hs[t - 1, ending], d_hn[ending], out=dh_buf[ending])
        dh0 = d_pre[0] @ w_hh
        # d W_hh = sum over t of d_pre[t]^T h_{t-1}: one GEMM over all steps (plus step 0's, from h0)
        d_w_hh = torch.addmm(d_pre[0].t() @ h0, d_pre[1:].reshape(-1, G).t(), hs[:-1].reshape(-1, H))
        return d_pre, dh0, dc_buf, d_w_hh, None


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
    T, B, _ = x.shape
    H = w_hh.shape[1]
    if reverse:
        x = reverse_within_lengths(x, lengths)

    def roll(w: Tensor) -> Tensor:  # gate rows (i, f, g, o) -> (o, i, f, g)
        return w.roll(H, dims=0)

    flat = x.reshape(T * B, x.shape[2])
    xp = flat @ roll(w_ih).t() if b_ih is None else torch.addmm(roll(b_ih + b_hh), flat, roll(w_ih).t())
    batch_sizes = None if lengths is None else (lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).sum(1).tolist()
    out, h_n, c_n, gates = _Recurrence.apply(xp.view(T, B, 4 * H), h0, c0, roll(w_hh), batch_sizes)
    gate_acts = None
    if return_gates:
        gate_acts = gates.view(T, B, 4, H)[:, :, [1, 2, 3, 0]]  # back to i, f, g, o
    if reverse:
        out = reverse_within_lengths(out, lengths)
        gate_acts = None if gate_acts is None else reverse_within_lengths(gate_acts, lengths)
    return out, h_n, c_n, gate_acts
