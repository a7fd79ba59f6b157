"""Building the compiled LSTM kernel (``csrc/recurrence.cpp``) and loading it: what :mod:`.compiled` runs.

The kernel is built with torch.utils.cpp_extension the first time it is needed on a machine (about 15-50 s;
needs a C++ compiler and ninja) and cached (torch's extensions directory, or ``$TORCH_EXTENSIONS_DIR``) under a
name that hashes everything the binary depends on (:func:`extension_name`). :func:`load` returns its ops, or
raises with the one-line reason it cannot be built.

bfloat16 products: on a CPU with AVX512-BF16 the build adds them (:func:`bf16_products`).
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

log = logging.getLogger(__name__)
# A CUDA build of torch on a machine without a GPU warns "No CUDA runtime is found" when cpp_extension is imported
# (which builds and finds this kernel): noise for a CPU-only kernel, printed before the CLI's own one-line output.
logging.getLogger("torch.utils.cpp_extension").addFilter(lambda r: not str(r.msg).startswith("No CUDA runtime"))

SOURCE = Path(__file__).with_name("csrc") / "recurrence.cpp"

# Compiler flags for the CPU capability torch itself dispatches to, so at::vec::Vectorized is as wide as
# torch's own kernels (the capability is part of the build's name: a cache shared between machines is safe).
_ARCH_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2"],
}

_ops = None  # torch.ops.lstm_train once loaded
_error: str | None = None  # why it could not be built, once tried


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
