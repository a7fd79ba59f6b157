"""The fast LSTM's time loop in C++: the same equations as ``fast.py``, built on first use, CPU only.

``csrc/recurrence.cpp`` holds the forward and backward loops of one layer and direction: threads split the
batch, and per step one register-blocked pass computes the products and the gate maths (the file says how).
This module builds it with torch.utils.cpp_extension the first time it is needed on a machine (about 15-50 s;
needs a C++ compiler and ninja), caches the build (torch's extensions directory, or ``$TORCH_EXTENSIONS_DIR``)
and wraps it in an autograd.Function.

:func:`auto_layer` is what ``LSTM(impl="fast")`` runs: this kernel wherever it applies, else fast.py's
pure-PyTorch loop, with one log line per process for each reason. ``LSTM_TRAIN_FAST_PATH`` chooses:
``auto`` (default), ``compiled`` (the kernel wherever it applies; an error if it cannot be built) or
``pytorch`` (never the kernel). Besides the plain cell the kernel runs the elementwise variants of
lstm_train/nn/variants.py (flags of its one cell), zoneout and recurrent dropout; the other cells run on fast.py's
autograd loop (``fast_cell_layer``), with one log line saying why.

bfloat16 products (``bf16=True``, what ``LSTM`` asks for under ``torch.autocast(dtype=torch.bfloat16)``): on a
CPU with AVX512-BF16 the build adds them (:func:`bf16_products`); x, h, the weights and the gate gradients are
rounded to bfloat16 for the matrix products, accumulated in float32, and everything else stays float32.
Elsewhere, and for one-step calls (decoding), the products stay float32.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

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
# A CUDA build of torch on a machine without a GPU warns "No CUDA runtime is found" when cpp_extension is imported
# (which builds and finds this kernel): noise for a CPU-only kernel, printed before the CLI's own one-line output.
logging.getLogger("torch.utils.cpp_extension").addFilter(lambda r: not str(r.msg).startswith("No CUDA runtime"))

ENV = "LSTM_TRAIN_FAST_PATH"
PATHS = ("auto", "compiled", "pytorch")
SOURCE = Path(__file__).with_name("csrc") / "recurrence.cpp"

# Compiler flags for the CPU capability torch itself dispatches to, so at::vec::Vectorized is as wide as
# torch's own kernels (the capability is part of the build's name: a cache shared between machines is safe).
_ARCH_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2"],
}

_ops = None  # torch.ops.lstm_train once loaded
_error: str | None = None  # why it could not be built, once tried
_announced: set[str] = set()


def build_directory(name: str) -> Path:
    """Where a build lives: under $TORCH_EXTENSIONS_DIR if set, else torch's per-user extensions cache."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def load():
    """The kernel's ops (``torch.ops.lstm_train``), built on this machine's first call and loaded once per process.

    Raises RuntimeError, with the reason in one line, when it cannot be built; later calls raise it again
    without retrying.
    """
    global _ops, _error
    if _ops is None and _error is None:
        try:
            _build_and_load()
            _ops = torch.ops.lstm_train
        except Exception as e:  # no compiler, no ninja, a compile error: all mean the PyTorch loop instead
            lines = str(e).strip().splitlines() or [type(e).__name__]
            _error = f"{type(e).__name__}: {lines[-1] if len(lines) > 1 else lines[0]}"[:300]
    if _error is not None:
        raise RuntimeError(f"the compiled LSTM kernel cannot be built ({_error})")
    return _ops


def _openmp() -> list[str]:
    """-fopenmp where torch's threads are OpenMP's and GCC's runtime is the one torch loads (Linux): ATen's
    parallel_for is inline code that runs on one thread unless compiled with OpenMP. Elsewhere the kernel
    runs on one thread."""
    return ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []


@functools.cache  # asked by every autocast layer call (each decoding step too); the CPU does not change
def bf16_products() -> bool:
    """Whether this CPU, and so the kernel built here, has bfloat16 products (AVX512-BF16's vdpbf16ps)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and torch.cpu._is_avx512_bf16_supported()


def _capability() -> str:
    """The instruction set the kernel is built for: torch's CPU capability, plus AVX512-BF16 where present."""
    return "AVX512_BF16" if bf16_products() else torch.backends.cpu.get_cpu_capability()


def _flags() -> list[str]:
    arch = _ARCH_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])
    bf16 = ["-mavx512bf16", "-DLSTM_TRAIN_BF16"] if bf16_products() else []
    return ["-O3", *arch, *bf16, *_openmp()]


def extension_name() -> str:
    """The build's name: everything the binary depends on (source, flags and so the CPU capability, torch and its
    headers' location, Python) is in it, so builds of other versions, environments or machines sharing a cache
    never mix: a binary is only ever loaded where it was built for."""
    headers = [str(Path(torch.__file__).parent), sysconfig.get_paths()["include"]]
    key = "\n".join([SOURCE.read_text(), *_flags(), torch.__version__, sys.version, *headers])
    capability = _capability().lower()
    return f"lstm_train_recurrence_{capability}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _build_and_load() -> None:
    name = extension_name()
    directory = build_directory(name)
    library = directory / f"{name}.so"
    if library.exists():  # built before: its name vouches for source, flags and torch, so no build tools needed
        try:
            torch.ops.load_library(str(library))
            return
        except OSError:  # a build killed midway: build it again
            pass
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler}; set CXX to use another) on the PATH")
    if not cpp_extension.is_ninja_available():
        # pip's ninja (a dependency) sits beside this interpreter, which a venv used unactivated leaves off the PATH
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        if not cpp_extension.is_ninja_available():
            raise RuntimeError("no ninja on the PATH (pip install ninja)")
    directory.mkdir(parents=True, exist_ok=True)
    with _build_lock(directory):  # another process may be building it: wait for it, then find it built
        fresh = not library.exists()
        if fresh:
            log.info("building the compiled LSTM kernel in %s (once per machine, about 15-50 s)", directory)
        # Built from a copy in its own directory: the same build for an editable checkout and a wheel's install
        source = directory / SOURCE.name
        if not source.exists():
            source.write_text(SOURCE.read_text())
        start = time.perf_counter()
        cpp_extension.load(
            name, [str(source)], extra_cflags=_flags(), extra_ldflags=_openmp(), build_directory=str(directory),
            is_python_module=False,
        )
        if fresh:
            log.info("built the compiled LSTM kernel in %.0f s", time.perf_counter() - start)


@contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on a build directory, which the OS releases if its holder dies.

    cpp_extension serialises builds with a lock file that it removes when done, so a build killed midway
    leaves the file behind and every later process waits on it forever. Holding this lock, no other process
    of ours is building, so a leftover file is stale and can go. (Without fcntl, i.e. on Windows, only
    cpp_extension's own lock applies.)
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(directory / "build.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file is closed
        (directory / "lock").unlink(missing_ok=True)
        yield


def _announce(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        log.info("LSTM fast path: %s", message)


def why_not_compiled(x: Tensor, h0: Tensor, weights: LayerWeights) -> str | None:
    """None if the compiled kernel runs these inputs, else why not (one short phrase)."""
    path = os.environ.get(ENV, "auto")
    if path not in PATHS:
        raise ValueError(f"{ENV} must be one of {', '.join(PATHS)}, got {path!r}")
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
    """One layer and direction of ``impl="fast"``: the compiled kernel where it applies, else ``fast_layer`` (or
    for another ``cell`` than the plain one, with its own parameters ``own``, ``fast.fast_cell_layer``).
    ``bf16``: bfloat16 products where the kernel has them (see the module docstring), else float32."""
    why = None if cell is None else why_not_kernel_cell(cell, noise)
    why = why or why_not_compiled(x, h0, weights)
    if why is None:
        _announce("the compiled C++ kernel (lstm_train/nn/csrc/recurrence.cpp)"
                  + ("" if cell is None else f", for {cell.describe()}"))
        if bf16:
            bf16 = _bf16_products_for(x)
        return compiled_layer(x, h0, c0, weights, lengths, reverse, return_gates, dh_sink, bf16, cell=cell, own=own,
                              noise=noise)
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


def _bf16_products_for(x: Tensor) -> bool:
    """Under bfloat16 autocast: whether this call takes bfloat16 products (logged once per reason)."""
    if x.dtype != torch.float32 or not bf16_products():
        _announce("autocast: float32 products (no AVX512-BF16 here)")
        return False
    _announce("autocast: bfloat16 products")
    return True


def compiled_layer(
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
    cell: Variant | None = None,
    own: Params | None = None,
    noise: Noise | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Run (T, B, I) input through one direction with the kernel; the contract of ``fast.fast_layer``.

    With ``lengths``, rows must be sorted longest first (the LSTM module sorts them). The weights are read
    as they are on every call: nothing is prepared or cached. ``bf16``: bfloat16 products (float32 tensors, a
    kernel with :func:`bf16_products`). ``cell``: an elementwise variant (``Variant.kernel_flags``), with its
    peepholes in ``own``; ``noise``: zoneout (every step's masks drawn here, before the loop) and recurrent
    dropout (one mask per sequence).
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
    masks = (None, None) if noise is None else noise.zoneout_masks(x.new_empty(T, B, H))
    drop = None if noise is None else noise.recurrent_mask(h0)
    bf16 = bf16 and drop is None  # the kernel's bfloat16 products take no recurrent dropout
    autograd = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*inputs, peep))
    if autograd:
        on_dh = dh_callback(dh_sink, lengths, reverse)
        out, h_n, c_n, gates, cells = _Recurrence.apply(*inputs, None, lengths, batch_sizes, on_dh, bf16, cell, peep,
                                                        masks, drop)
    else:
        out, h_n, c_n, gates, cells = load().lstm_forward(*inputs, batch_sizes, return_gates, bf16, flags, peep,
                                                          *masks, drop)
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
        on_dh: DhCallback | None, bf16: bool, cell: Variant | None, peep: Tensor | None,
        masks: tuple[Tensor | None, Tensor | None], drop: Tensor | None,
    ):
        flags = 0 if cell is None else cell.kernel_flags()
        hs, h_n, c_n, gates, cs = load().lstm_forward(x, h0, c0, w_ih, w_hh, bias, batch_sizes, True, bf16, flags,
                                                      peep, *masks, drop)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, bias, w_hr, gates, hs, cs, peep, *masks, drop)
        ctx.lengths, ctx.batch_sizes, ctx.on_dh, ctx.bf16 = lengths, batch_sizes, on_dh, bf16
        ctx.cell, ctx.flags = cell, flags
        ctx.set_materialize_grads(False)  # unused outputs (often all but h_n) get None, not a zero tensor
        ctx.mark_non_differentiable(gates, cs)
        return hs, h_n, c_n, gates, cs

    @staticmethod
    def backward(ctx, d_hs, d_hn, d_cn, _d_gates, _d_cs):
        if torch.is_grad_enabled():  # create_graph=True: the reference maths, which autograd can differentiate
            if ctx.cell is not None:
                return _differentiable_cell_backward(ctx, d_hs, d_hn, d_cn)
            return (*differentiable_backward(ctx, d_hs, d_hn, d_cn), None, None, None, None, None)  # bf16 ... drop
        x, h0, c0, w_ih, w_hh, bias, _, gates, hs, cs, peep, zc, zh, drop = ctx.saved_tensors
        need = ctx.needs_input_grad
        record = ctx.on_dh is not None
        d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, dh_steps, d_peep = load().lstm_backward(
            x, w_ih, w_hh, h0, c0, gates, hs, cs, d_hs, d_hn, d_cn, ctx.batch_sizes,
            need[0], need[3], bias is not None and need[5], record, ctx.bf16, ctx.flags, peep, zc, zh, drop,
        )  # fmt: skip
        if record:
            ctx.on_dh(dh_steps)
        return d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, None, None, None, None, None, None, d_peep, None, None


def _differentiable_cell_backward(ctx, d_hs: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None) -> tuple:
    """fast.differentiable_backward for a variant: its reference maths (``Variant.step``) run again on the saved
    inputs, differentiated by autograd with ``create_graph``."""
    x, h0, c0, w_ih, w_hh, bias, _, _, _, _, peep, zc, zh, drop = ctx.saved_tensors
    positions = {0: x, 1: h0, 2: c0, 3: w_ih, 4: w_hh, 5: bias, 12: peep}
    wanted = [k for k, t in positions.items() if t is not None and ctx.needs_input_grad[k]]
    result: list[Tensor | None] = [None] * 15
    cell: Variant = ctx.cell
    own = {} if peep is None else {f"weight_c{g}": peep[k] for k, g in enumerate("ifo") if g in cell.peepholes}
    sink = None if ctx.on_dh is None else x.new_zeros(x.shape[0], x.shape[1], h0.shape[1])
    with torch.enable_grad():
        weights = (w_ih, w_hh, bias, None, None)  # bias is already b_ih + b_hh
        hs, h_n, c_n, _, _ = cell_layer(x, h0, c0, weights, ctx.lengths, False, False, sink, cell=cell, own=own,
                                        noise=Noise(), zoneout_masks=(zc, zh), recurrent_mask=drop)  # its own masks
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
