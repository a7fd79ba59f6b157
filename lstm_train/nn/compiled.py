"""The fast LSTM's time loop in C++: the same equations as ``fast.py``, CPU only; which calls run it.

``csrc/recurrence.cpp`` holds the forward and backward loops of one layer and direction: threads split the
batch, and per step one register-blocked pass computes the products and the gate maths (the file says how).
extension.py builds it on first use; this module decides per call whether it runs and wraps it in an
autograd.Function.

:func:`auto_layer` is what ``LSTM(backend="fast")`` runs: this kernel wherever it applies, else fast.py's
pure-PyTorch loop, with one log line per process for each reason; ``LSTM_TRAIN_FAST_PATH`` can insist on
either (the backend table: lstm_train/nn/backend.py). Besides the plain cell the kernel runs the elementwise
variants of lstm_train/nn/variants.py (flags of its one cell), zoneout and recurrent dropout; the other cells run
on fast.py's autograd loop (``fast_cell_layer``), with one log line saying why.

bfloat16 products (what ``LSTM`` asks for under ``torch.autocast(dtype=torch.bfloat16)``): on a CPU with
AVX512-BF16 the build adds them (:func:`.extension.bf16_products`); x, h, the weights and the gate gradients are
rounded to bfloat16 for the matrix products, accumulated in float32, and everything else stays float32. Elsewhere,
and for one-step calls (decoding), the products stay float32. Two ways compute the same roundings
(:func:`bf16_products_here` chooses, ``LSTM_TRAIN_BF16_PRODUCTS`` can insist):

    onednn   each step's products by oneDNN's brgemm ukernel, which torch ships (>= 2.6 or so) and which runs
             on AMX tiles where the CPU has them (amx_bf16), then the cell on its results: the choice wherever
             it runs (without AMX too: 0.80-1.00x the kernel's time in training, docs/lstm/speed.md)
    kernel   the kernel's own register-blocked loops with AVX512-BF16's vdpbf16ps: where oneDNN's cannot run
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import Tensor

from .extension import bf16_products, load
from .fast import (
    DhCallback,
    dh_callback,
    differentiable_backward,
    fast_cell_layer,
    fast_layer,
    reverse_within_lengths,
    rows_per_step,
)
from .reference import LayerWeights, cell_layer
from .variants import Cell, Noise, Params, Variant

log = logging.getLogger(__name__)

ENV = "LSTM_TRAIN_FAST_PATH"
PATHS = ("auto", "compiled", "pytorch")
BF16_ENV = "LSTM_TRAIN_BF16_PRODUCTS"
BF16_SETTINGS = ("auto", "kernel", "onednn", "fp32")
PRODUCTS = {"fp32": 0, "kernel": 1, "onednn": 2}  # the kernel's `products` argument
_announced: set[str] = set()


def _announce(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        log.info("LSTM fast path: %s", message)


def fast_path() -> str:
    """LSTM_TRAIN_FAST_PATH's value (auto when unset); a ValueError for any other value than PATHS'."""
    path = os.environ.get(ENV, "auto")
    if path not in PATHS:
        raise ValueError(f"{ENV}={path} is not one of {', '.join(PATHS)}; unset it to let the LSTM choose (auto)")
    return path


def bf16_setting() -> str:
    """LSTM_TRAIN_BF16_PRODUCTS's value (auto when unset); a ValueError for any other value than BF16_SETTINGS'."""
    value = os.environ.get(BF16_ENV, "auto")
    if value not in BF16_SETTINGS:
        raise ValueError(f"{BF16_ENV}={value} is not one of {', '.join(BF16_SETTINGS)}; unset it to let the LSTM "
                         "choose (auto)")
    return value


@functools.cache  # the CPU does not change
def onednn_bf16() -> int:
    """Whether oneDNN's brgemm computes the kernel's bfloat16 products here: 2 on AMX, 1 without AMX, 0 where it
    cannot, -1 where it runs but failed the kernel's check of its layout (recurrence.cpp's onednn_bf16)."""
    return load().onednn_bf16()


def bf16_products_here() -> tuple[str, str]:
    """Under bfloat16 autocast, the kernel's products on this CPU (a PRODUCTS key) and why, in a phrase: oneDNN's
    brgemm wherever it runs and passes the kernel's check, else the kernel's own loops; float32 without
    AVX512-BF16 (trainer.precision=bf16 is refused there). A ValueError for a setting this CPU cannot run."""
    wanted = bf16_setting()
    if not bf16_products():
        if wanted in ("kernel", "onednn"):
            raise ValueError(f"{BF16_ENV}={wanted}, but this CPU has no AVX512-BF16; unset it")
        return "fp32", "no AVX512-BF16 here"
    if wanted in ("kernel", "fp32"):
        return wanted, f"{BF16_ENV}={wanted}"
    status = onednn_bf16()
    why_not = None
    if not torch.backends.mkldnn.enabled:  # torch's brgemm refuses to run then (its device check reads the flag)
        why_not = "oneDNN is switched off (torch.backends.mkldnn.enabled is False)"
    elif status < 0:
        why_not = "oneDNN's brgemm failed the kernel's check of its layout here"
    elif status == 0:
        why_not = "this torch's oneDNN has no bfloat16 brgemm"
    if wanted == "onednn":
        if why_not is not None:
            raise ValueError(f"{BF16_ENV}=onednn, but {why_not}; set it to kernel or unset it")
        return "onednn", f"{BF16_ENV}=onednn"
    if why_not is not None:
        return "kernel", why_not
    return "onednn", "on AMX tiles" if status == 2 else "AVX-512, no AMX here"


def why_not_compiled(x: Tensor, h0: Tensor, weights: LayerWeights) -> str | None:
    """None if the compiled kernel runs these inputs, else why not (one short phrase)."""
    path = fast_path()
    if path == "pytorch":
        return f"{ENV}=pytorch"
    if any(w is not None for w in weights[4:]):
        return "projections (proj_size) are not in the kernel"
    if x.device.type != "cpu":
        return f"{x.device.type} tensors (the kernel is CPU-only)"
    if x.dtype not in (torch.float32, torch.float64):
        return f"{x.dtype} tensors (the kernel takes float32 and float64)"
    if any(t is not None and (t.dtype != x.dtype or t.device != x.device) for t in (h0, *weights)):
        return "input, states and weights of different dtypes or devices"
    if torch.is_autocast_enabled("cpu"):
        return "autocast (the kernel computes in the input's dtype)"
    if x.numel() == 0 or h0.numel() == 0:
        return "an empty batch"
    try:
        load()
    except RuntimeError as e:
        if path == "compiled":
            raise RuntimeError(f"{ENV}=compiled, but {e}") from None
        return str(e)
    return None


def auto_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: LayerWeights,
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
    dh_sink: Tensor | None = None,
    bf16: bool = False,
    *,
    cell: Cell | None = None,
    own: Params | None = None,
    noise: Noise | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """One layer and direction of ``backend="fast"``: the compiled kernel where it applies, else ``fast_layer`` (or
    for another ``cell`` than the plain one, with its own parameters ``own``, ``fast.fast_cell_layer``).
    ``bf16``: bfloat16 products where the kernel has them (see the module docstring), else float32."""
    why = None if cell is None else why_not_kernel_cell(cell, noise)
    why = why or why_not_compiled(x, h0, weights)
    if why is None:
        _announce("the compiled C++ kernel (lstm_train/nn/csrc/recurrence.cpp)"
                  + ("" if cell is None else f", for {cell.describe()}"))
        products = _bf16_products_for(x, noise) if bf16 else "fp32"
        return compiled_layer(x, h0, c0, weights, lengths, reverse, return_gates, dh_sink, products, cell=cell,
                              own=own, noise=noise)
    if cell is not None:
        _announce(f"the pure-PyTorch loop through autograd, for {cell.describe()}: {why}")
        return fast_cell_layer(x, h0, c0, weights, lengths, reverse, return_gates, dh_sink, cell=cell, own=own,
                               noise=noise)
    _announce(f"the pure-PyTorch loop, for {why}")
    return fast_layer(x, h0, c0, weights, lengths, reverse, return_gates, dh_sink)


def why_not_kernel_cell(cell: Cell, noise: Noise | None) -> str | None:
    """None if the kernel has this cell (an elementwise variant: not layer norm, not FGR, not your own), else why not;
    it has every regulariser."""
    if not isinstance(cell, Variant):
        return "the kernel has the built-in variants only"
    if cell.kernel_flags() is None:
        return "the kernel has the elementwise variants only (not layer norm, not FGR)"
    return None


_NAMES = {"fp32": "float32 products", "kernel": "bfloat16 products in the kernel's loops",
          "onednn": "bfloat16 products by oneDNN's brgemm"}


def _bf16_products_for(x: Tensor, noise: Noise | None) -> str:
    """Under bfloat16 autocast: this call's products, a PRODUCTS key (logged once per reason)."""
    if x.dtype != torch.float32:
        products, why = "fp32", f"{x.dtype} tensors"
    elif noise is not None and noise.training and noise.recurrent_dropout:
        products, why = "fp32", "recurrent dropout takes float32 products"
    else:
        products, why = bf16_products_here()
    _announce(f"autocast: {_NAMES[products]} ({why})")
    return products


def compiled_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: LayerWeights,
    lengths: Tensor | None,
    reverse: bool,
    return_gates: bool,
    dh_sink: Tensor | None = None,
    products: str = "fp32",
    *,
    cell: Variant | None = None,
    own: Params | None = None,
    noise: Noise | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Run (T, B, I) input through one direction with the kernel; the contract of ``fast.fast_layer``.

    With ``lengths``, rows must be sorted longest first (the LSTM module sorts them). The weights are read
    as they are on every call: nothing is prepared or cached. ``products``: a PRODUCTS key; bfloat16 ones (kernel,
    onednn) take float32 tensors and a kernel with :func:`bf16_products`. ``cell``: an elementwise variant
    (``Variant.kernel_flags``), with its peepholes in ``own``; ``noise``: zoneout (in training a seed drawn here,
    from which the kernel hashes every step's masks: ``variants.zoneout_bits``) and recurrent dropout (one mask per
    sequence).
    """
    T, B = x.shape[:2]
    w_ih, w_hh, b_ih, b_hh, _ = weights  # no projection: why_not_compiled
    H = w_hh.shape[1]
    if reverse:
        x = reverse_within_lengths(x, lengths)
    bias = None if b_ih is None else b_ih + b_hh  # 4H numbers: summed per call, never kept
    batch_sizes = [] if lengths is None else rows_per_step(lengths, T)
    inputs = (x.contiguous(), h0, c0, w_ih, w_hh, bias)
    flags, peep = (0, None) if cell is None else (cell.kernel_flags(), cell.kernel_peepholes(own))
    noise = noise or Noise()
    seed = noise.zoneout_seed()
    zoneout = (noise.zoneout_c, noise.zoneout_h, [] if seed is None else list(seed))
    drop = noise.recurrent_mask(h0)
    mode = PRODUCTS["fp32" if drop is not None else products]  # bfloat16 products take no recurrent dropout
    autograd = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*inputs, peep))
    if autograd:
        on_dh = dh_callback(dh_sink, lengths, reverse)
        out, h_n, c_n, gates, cells = _Recurrence.apply(*inputs, None, lengths, batch_sizes, on_dh, mode, cell, peep,
                                                        noise, seed, drop)
    else:
        out, h_n, c_n, gates, cells = load().lstm_forward(*inputs, batch_sizes, return_gates, mode, flags, peep,
                                                          *zoneout, drop)
    gate_acts = None
    if return_gates:
        gate_acts = gates.view(T, B, 4, H)  # already in torch's (i, f, g, o) order
        if autograd:  # copies: the backward reads gates and cells
            gate_acts, cells = gate_acts.clone(), cells.clone()
    else:
        cells = None
    if reverse:
        out = reverse_within_lengths(out, lengths)
        if return_gates:
            gate_acts, cells = (reverse_within_lengths(v, lengths) for v in (gate_acts, cells))
    return out, h_n, c_n, gate_acts, cells


class _Recurrence(torch.autograd.Function):
    """One layer and direction through the kernel: ``(hs, h_n, c_n, gates, cs)``, the last two not differentiable.

    Its inputs are those of fast.py's ``_Recurrence`` (``w_hr`` always None here), so that a double backward
    runs fast.py's differentiable fallback on the same saved tensors; then a variant's cell and peepholes.
    """

    @staticmethod
    def forward(
        ctx, x, h0, c0, w_ih, w_hh, bias, w_hr, lengths: Tensor | None, batch_sizes: list[int],
        on_dh: DhCallback | None, products: int, cell: Variant | None, peep: Tensor | None, noise: Noise,
        seed: tuple[int, int] | None, drop: Tensor | None,
    ):
        flags = 0 if cell is None else cell.kernel_flags()
        ctx.zoneout = (noise.zoneout_c, noise.zoneout_h, [] if seed is None else list(seed))
        hs, h_n, c_n, gates, cs = load().lstm_forward(x, h0, c0, w_ih, w_hh, bias, batch_sizes, True, products, flags,
                                                      peep, *ctx.zoneout, drop)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, bias, w_hr, gates, hs, cs, peep, drop)
        ctx.lengths, ctx.batch_sizes, ctx.on_dh, ctx.products = lengths, batch_sizes, on_dh, products
        ctx.cell, ctx.flags, ctx.noise, ctx.seed = cell, flags, noise, seed
        ctx.set_materialize_grads(False)  # unused outputs (often all but h_n) get None, not a zero tensor
        ctx.mark_non_differentiable(gates, cs)
        return hs, h_n, c_n, gates, cs

    @staticmethod
    def backward(ctx, d_hs, d_hn, d_cn, _d_gates, _d_cs):
        if torch.is_grad_enabled():  # create_graph=True: the reference maths, which autograd can differentiate
            if ctx.cell is not None:
                return _differentiable_cell_backward(ctx, d_hs, d_hn, d_cn)
            return (*differentiable_backward(ctx, d_hs, d_hn, d_cn), None, None, None, None, None, None)  # products ...
        x, h0, c0, w_ih, w_hh, bias, _, gates, hs, cs, peep, drop = ctx.saved_tensors
        need = ctx.needs_input_grad
        record = ctx.on_dh is not None
        with torch.autocast("cpu", enabled=False):  # a backward run under autocast: the kernel's GEMMs keep its dtypes
            d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, dh_steps, d_peep = load().lstm_backward(
                x, w_ih, w_hh, h0, c0, gates, hs, cs, d_hs, d_hn, d_cn, ctx.batch_sizes,
                need[0], need[3], bias is not None and need[5], record, ctx.products, ctx.flags, peep, *ctx.zoneout,
                drop,
            )  # fmt: skip
        if record:
            ctx.on_dh(dh_steps)
        return d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, None, None, None, None, None, None, d_peep, None, None, None


def _differentiable_cell_backward(ctx, d_hs: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None) -> tuple:
    """fast.differentiable_backward for a variant: its reference maths (``Variant.step``) run again on the saved
    inputs, differentiated by autograd with ``create_graph``."""
    x, h0, c0, w_ih, w_hh, bias, _, _, _, _, peep, drop = ctx.saved_tensors
    positions = {0: x, 1: h0, 2: c0, 3: w_ih, 4: w_hh, 5: bias, 12: peep}
    wanted = [k for k, t in positions.items() if t is not None and ctx.needs_input_grad[k]]
    result: list[Tensor | None] = [None] * 16
    cell: Variant = ctx.cell
    own = {} if peep is None else {f"weight_c{g}": peep[k] for k, g in enumerate("ifo") if g in cell.peepholes}
    sink = None if ctx.on_dh is None else x.new_zeros(x.shape[0], x.shape[1], h0.shape[1])
    with torch.enable_grad():
        weights = (w_ih, w_hh, bias, None, None)  # bias is already b_ih + b_hh
        hs, h_n, c_n, _, _ = cell_layer(x, h0, c0, weights, ctx.lengths, False, False, sink, cell=cell, own=own,
                                        noise=ctx.noise, zoneout_seed=ctx.seed, recurrent_mask=drop)  # its own masks
        pairs = [(out, grad) for out, grad in ((hs, d_hs), (h_n, d_hn), (c_n, d_cn)) if grad is not None]
        if pairs and wanted:
            outs, grads = zip(*pairs, strict=True)
            found = torch.autograd.grad(outs, [positions[k] for k in wanted], grads, create_graph=True,
                                        allow_unused=True)
            for k, grad in zip(wanted, found, strict=True):
                result[k] = grad
    if sink is not None:
        ctx.on_dh(sink)
    return tuple(result)
