"""The compiled kernel beyond the parity tests every path runs: sizes that use its register blocks, threads and
padding, float32, which path runs when (and the one log line saying so), and building it safely."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from lstm_train.nn import LSTM, compiled, extension
from tests.helpers import grads, run_torch, threads, twins
from tests.paths import on_path

pytestmark = pytest.mark.usefixtures("compiled_kernel")


def outputs_and_grads(lstm, x, hx, lengths) -> list[torch.Tensor]:
    """Output, h_n, c_n and the gradients of x, hx and every parameter."""
    out, (h, c) = run_torch(lstm, x, hx, lengths) if isinstance(lstm, torch.nn.LSTM) else lstm(x, hx, lengths=lengths)
    return [out, h, c, *grads((out, h, c), [x, *hx, *lstm.parameters()])]


# The kernel gives each thread at least 2**20 multiply-adds of a call (T B 4H (I + H) forward, T B 4H H
# backward): all calls but the 16- and 18-row cases' run on two threads. (torch.nn.LSTM runs on one: on a busy
# machine its many small parallel ops wait seconds for the cores.)
@pytest.mark.parametrize(
    ("T", "B", "H", "lengths"),
    [
        (12, 16, 60, None),  # several row blocks per thread, hidden units not a whole number of vectors
        (10, 31, 44, "random"),  # padded: rows drop out of the batch at different steps on both threads
        (2, 8, 16, None),  # 16 rows in all: ATen's GEMMs instead of packed weights
        (1, 20, 40, None),  # one step (decoding): ATen's GEMMs too, whatever the batch
        (3, 6, 33, "random"),  # 18 rows: packed weights
        (8, 16, 66, "random"),  # (float64: 8 lanes) backward blocks of 4 vectors, the last one partial
    ],
)
def test_parity_at_sizes_that_use_the_blocks_and_threads(T, B, H, lengths):
    torch.manual_seed(T * B + H)
    with on_path("compiled") as backend:
        theirs, ours = twins(backend, input_size=5, hidden=H, num_layers=2, bidirectional=True)
        x = torch.randn(T, B, 5, dtype=torch.double, requires_grad=True)
        hx = tuple(torch.randn(4, B, H, dtype=torch.double, requires_grad=True) for _ in range(2))
        if lengths == "random":
            lengths = torch.randint(1, T + 1, (B,)).tolist()
        with threads(1):
            expected = outputs_and_grads(theirs, x, hx, lengths)
        with threads(2):
            actual = outputs_and_grads(ours, x, hx, lengths)
        for a, b in zip(expected, actual, strict=True):
            torch.testing.assert_close(b, a, atol=1e-9, rtol=0)


def test_float32_matches_torch():
    torch.manual_seed(1)
    theirs = torch.nn.LSTM(10, 64, 2, batch_first=True)
    with on_path("compiled") as backend:
        ours = LSTM(10, 64, 2, batch_first=True, backend=backend)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(16, 30, 10, requires_grad=True)
        (o1, (h1, c1)), (o2, (h2, c2)) = theirs(x), ours(x)
        for a, b in ((o1, o2), (h1, h2), (c1, c2)):
            torch.testing.assert_close(b, a, atol=2e-6, rtol=0)
        expected = grads((o1, h1, c1), [x, *theirs.parameters()])
        for a, b in zip(expected, grads((o2, h2, c2), [x, *ours.parameters()]), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_recorded_hidden_grads_match_the_pytorch_loop():
    """dL/dh_t of every step at a size with several blocks and threads (both paths are checked against a
    manual unroll at small sizes in test_nn_record)."""
    torch.manual_seed(2)
    lstm = LSTM(4, 24, 2, bidirectional=True, batch_first=True).double()
    x = torch.randn(14, 11, 4, dtype=torch.double)
    lengths = torch.randint(1, 12, (14,)).tolist()
    results = {}
    for path in ("compiled", "fast"):
        with threads(2 if path == "compiled" else 1), on_path(path), lstm.recording(grads=True) as calls:
            out, (h_n, c_n) = lstm(x, lengths=lengths)
            (out.pow(2).sum() + h_n.sum() + c_n.sum()).backward()
        results[path] = calls[0]
    for a, b in zip(results["compiled"].hidden_grads, results["fast"].hidden_grads, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    for a, b in zip(results["compiled"].gates, results["fast"].gates, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


# bfloat16 products -------------------------------------------------------------------------------------------

needs_bf16 = pytest.mark.skipif(not extension.bf16_products(), reason="no AVX512-BF16 on this CPU")
# both ways to the same roundings; oneDNN's brgemm runs wherever the kernel has bfloat16 products (on AVX-512
# kernels without AMX), so its path is checked on every such CPU, not only where auto chooses it (AMX)
BF16_PATHS = ["kernel", "onednn"]


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).double()


class _Products(torch.autograd.Function):
    """a @ w^T as the kernel's bf16 path computes it: operands rounded to bfloat16, exact sums (float64); the
    backward rounds the incoming gradient too, and its weight gradient's result (a GEMM's bfloat16 output)."""

    @staticmethod
    def forward(ctx, a, w, round_da):
        ctx.save_for_backward(a, w)
        ctx.round_da = round_da
        return bf16(a) @ bf16(w).T

    @staticmethod
    def backward(ctx, d):
        a, w = ctx.saved_tensors
        da = bf16(d) @ bf16(w)
        return (bf16(da) if ctx.round_da else da), bf16(d).T @ bf16(a), None


def emulated_layer(x, h0, c0, w_ih, w_hh, bias, lengths):
    """One direction of the kernel's bf16 path in float64: (hs, h_n, c_n) and their autograd graph. h is
    rounded to float32 before the next step's product rounds it to bfloat16, as the kernel stores it."""
    h, c, outs = h0, c0, []
    x_proj = _Products.apply(x.reshape(-1, x.shape[-1]), w_ih, True).view(*x.shape[:2], -1)  # d_x: a GEMM's
    for t in range(x.shape[0]):
        i, f, g, o = (bias + x_proj[t] + _Products.apply(h.float().double(), w_hh, False)).chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        alive = (torch.as_tensor(lengths) > t)[:, None]
        h, c = torch.where(alive, h_new, h), torch.where(alive, c_new, c)
        outs.append(torch.where(alive, h_new, 0.0))
    return torch.stack(outs), h, c


@needs_bf16
@pytest.mark.parametrize("products", BF16_PATHS)
@pytest.mark.parametrize(("T", "B", "I", "H"), [(9, 13, 5, 37), (6, 40, 64, 48), (2, 9, 7, 16), (5, 64, 3, 70)])
def test_bf16_products_match_an_emulation_of_them(T, B, I, H, products):
    """Odd input and hidden sizes (the padded bfloat16 pair), every block height, two threads, padding; oneDNN's
    blocks of 64 columns with a partial one (H=70), and a thread's 32 rows (B=64) as they drop out; the
    kernel's float32 outputs and gradients against the same rounding done in float64. A wrong weight packing
    or a stale h is off by O(0.1); the outputs by summation order (~1e-6: float32 products are ~1e-3 off);
    the gradients by a bfloat16 ulp (0.4%) where a GEMM returns bfloat16 or a rounded gate gradient lands on
    the other side of a rounding boundary than in float64."""
    if products == "onednn" and compiled.onednn_bf16() <= 0:
        pytest.skip("oneDNN's bfloat16 brgemm does not run here")
    torch.manual_seed(T + B + I + H)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H) * 0.5, torch.randn(B, H)
    w_ih, w_hh, bias = torch.randn(4 * H, I) * 0.3, torch.randn(4 * H, H) * 0.3, torch.randn(4 * H) * 0.1
    lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True)
    lengths[0] = T
    inputs = [t.requires_grad_() for t in (x, h0, c0, w_ih, w_hh, bias)]
    with threads(2):
        hs, h_n, c_n, _, _ = compiled.compiled_layer(x, h0, c0, (w_ih, w_hh, bias, torch.zeros_like(bias), None),
                                                     torch.tensor(lengths), False, False, products=products)
    doubles = [t.detach().double().requires_grad_() for t in inputs]
    expected = emulated_layer(*doubles, lengths)
    for a, b in zip((hs, h_n, c_n), expected, strict=True):
        torch.testing.assert_close(a.double(), b.detach(), atol=2e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    probes = [torch.randn(o.shape, generator=g, dtype=torch.double) for o in expected]  # one random linear loss

    def loss(outputs):
        return sum((o.double() * p).sum() for o, p in zip(outputs, probes, strict=True))

    actual_grads = torch.autograd.grad(loss((hs, h_n, c_n)), inputs)
    expected_grads = torch.autograd.grad(loss(expected), doubles)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "bias")
    for name, a, b in zip(names, actual_grads, expected_grads, strict=True):
        bound = (1e-4 if name == "bias" else 1e-2) * b.abs().max().item()  # bias: a float32 sum of d_pre
        torch.testing.assert_close(a.double(), b, atol=bound, rtol=0, msg=f"d {name}")


@needs_bf16
def test_autocast_runs_the_bf16_kernel_and_float32_stays_float32(calls, caplog):
    torch.manual_seed(3)
    lstm = LSTM(6, 40, 2, bidirectional=True)
    x = torch.randn(7, 12, 6)
    with on_path("compiled"), caplog.at_level(logging.INFO, logger=compiled.__name__):
        out32 = lstm(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = lstm(x)[0]
        again = lstm(x)[0]  # autocast over: float32 products again
    assert out16.dtype == torch.bfloat16 and calls["compiled"] == 12
    products, why = compiled.bf16_products_here()
    name = {"onednn": "bfloat16 products by oneDNN's brgemm", "kernel": "bfloat16 products in the kernel's loops"}
    assert [r.getMessage() for r in caplog.records][1:] == [f"LSTM fast path: autocast: {name[products]} ({why})"]
    error = (out16.float() - out32).abs().max().item()
    assert 1e-4 < error < 3e-2  # lowered products, not float32 ones; and within bfloat16's rounding
    torch.testing.assert_close(again, out32, atol=0, rtol=0)


@needs_bf16
@pytest.mark.parametrize(("settings", "lengths"), [
    ({"variant": "v", "zoneout_c": 0.2, "zoneout_h": 0.1}, None),  # peepholes, zoneout's hashed masks
    ({"variant": "cifg"}, [9, 9, 7, 7, 7, 5, 3, 3, 2, 1] * 4),  # the coupled gates; padding, a partial block
    ({"variant": "noaf", "bidirectional": True, "num_layers": 2}, None),
])
def test_onednn_and_kernel_bf16_products_agree_on_variants(settings, lengths, monkeypatch):
    """The two ways to the same roundings, through the LSTM module under autocast: outputs and gradients equal up
    to the order of float32 sums (a bfloat16 ulp where a rounded value lands on the other side of a boundary)."""
    if compiled.onednn_bf16() <= 0:
        pytest.skip("oneDNN's bfloat16 brgemm does not run here")
    torch.manual_seed(0)
    lstm = LSTM(12, 72, **settings)
    x = torch.randn(9, 40, 12, requires_grad=True)
    results = []
    for products in BF16_PATHS:
        monkeypatch.setenv(compiled.BF16_ENV, products)
        torch.manual_seed(5)  # zoneout's seed
        with on_path("compiled"), threads(2), torch.autocast("cpu", torch.bfloat16):
            out, (h, c) = lstm(x, lengths=None if lengths is None else torch.tensor(lengths))
        results.append([out.float(), h.float(), c.float(), *grads((out, h, c), [x, *lstm.parameters()])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2 * b.abs().max().item(), rtol=0)
        assert (a - b).abs().median() <= 1e-3 * b.abs().max()  # most entries far closer than the worst


def test_bf16_products_follow_the_cpu_and_the_setting(monkeypatch):
    """oneDNN's brgemm wherever it runs and passes the check (with AMX or without), else the kernel's loops; a
    setting insists, or says in one line why this CPU cannot."""
    monkeypatch.setattr(compiled, "bf16_products", lambda: True)
    monkeypatch.delenv(compiled.BF16_ENV, raising=False)
    for status, products in ((2, "onednn"), (1, "onednn"), (0, "kernel"), (-1, "kernel")):
        monkeypatch.setattr(compiled, "onednn_bf16", lambda status=status: status)
        assert compiled.bf16_products_here()[0] == products
    monkeypatch.setattr(compiled, "onednn_bf16", lambda: 2)
    for setting in ("kernel", "onednn", "fp32"):
        monkeypatch.setenv(compiled.BF16_ENV, setting)
        assert compiled.bf16_products_here() == (setting, f"LSTM_TRAIN_BF16_PRODUCTS={setting}")
    monkeypatch.setattr(compiled, "onednn_bf16", lambda: 0)
    monkeypatch.setenv(compiled.BF16_ENV, "onednn")
    with pytest.raises(ValueError, match=r"^LSTM_TRAIN_BF16_PRODUCTS=onednn, but this torch's oneDNN has no bfloat16 "
                       r"brgemm; set it to kernel or unset it$"):
        compiled.bf16_products_here()
    monkeypatch.setenv(compiled.BF16_ENV, "amx")
    with pytest.raises(ValueError, match=r"^LSTM_TRAIN_BF16_PRODUCTS=amx is not one of auto, kernel, onednn, fp32"):
        compiled.bf16_products_here()
    monkeypatch.setattr(compiled, "bf16_products", lambda: False)
    monkeypatch.setenv(compiled.BF16_ENV, "auto")
    assert compiled.bf16_products_here() == ("fp32", "no AVX512-BF16 here")
    monkeypatch.setenv(compiled.BF16_ENV, "kernel")
    with pytest.raises(ValueError, match=r"^LSTM_TRAIN_BF16_PRODUCTS=kernel, but this CPU has no AVX512-BF16; "):
        compiled.bf16_products_here()
    monkeypatch.setattr(compiled, "bf16_products", lambda: True)
    monkeypatch.setattr(compiled, "onednn_bf16", lambda: 1)
    monkeypatch.setenv(compiled.BF16_ENV, "auto")
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # torch's brgemm refuses to run then
    assert compiled.bf16_products_here() == ("kernel", "oneDNN is switched off (torch.backends.mkldnn.enabled is "
                                             "False)")


@needs_bf16
def test_onednn_brgemm_passes_its_check_and_finds_amx_where_the_cpu_has_it():
    """The kernel's small check of oneDNN's product in its packed layout never fails on a CPU we know; it reports
    AMX only where /proc/cpuinfo lists amx_bf16 (the converse needs Linux to grant the tiles, and oneDNN not
    capped below AMX)."""
    status = compiled.onednn_bf16()
    assert status != -1
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")),
                 "").split()
    assert status != 2 or "amx_bf16" in flags


# Which path runs ----------------------------------------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch) -> dict[str, int]:
    """Counts the calls of each path's layer function, and forgets which log lines were given."""
    counts = {"compiled": 0, "pytorch": 0}
    for name, key in (("compiled_layer", "compiled"), ("fast_layer", "pytorch")):
        original = getattr(compiled, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(compiled, name, counted)
    monkeypatch.setattr(compiled, "_announced", set())
    return counts


def test_cpu_float_tensors_run_compiled_and_say_so_once(calls, caplog):
    lstm = LSTM(3, 4, 2)
    x = torch.randn(5, 2, 3)
    with on_path("compiled"), caplog.at_level(logging.INFO, logger=compiled.__name__):
        for _ in range(3):
            lstm(x)[0].sum().backward()
    assert calls == {"compiled": 6, "pytorch": 0}
    assert [r.getMessage() for r in caplog.records] == [
        "LSTM fast path: the compiled C++ kernel (lstm_train/nn/csrc/recurrence.cpp)"
    ]


def test_what_the_kernel_lacks_falls_back_to_the_pytorch_loop_with_one_line_per_reason(calls, caplog):
    lstm = LSTM(3, 4).to(torch.bfloat16)
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        for _ in range(2):
            lstm(x)
        with on_path("fast"):
            LSTM(3, 4)(x.float())
    assert calls == {"compiled": 0, "pytorch": 3}
    assert [r.getMessage() for r in caplog.records] == [
        "LSTM fast path: the pure-PyTorch loop, for torch.bfloat16 tensors (the kernel takes float32 and float64)",
        "LSTM fast path: the pure-PyTorch loop, for LSTM_TRAIN_FAST_PATH=pytorch",
    ]


def test_why_not_compiled():
    why = compiled.why_not_compiled
    x, h0 = torch.randn(3, 2, 4), torch.zeros(2, 5)
    weights = (torch.randn(20, 4), torch.randn(20, 5), torch.randn(20), torch.randn(20), None)
    with on_path("compiled"):
        assert why(x, h0, weights) is None
        assert why(x, h0, (*weights[:4], torch.randn(5, 3))) == "projections (proj_size) are not in the kernel"
        assert why(x.double(), h0, weights) == "input, states and weights of different dtypes or devices"
        assert why(x[:, :0], h0[:0], weights) == "an empty batch"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert why(x, h0, weights) == "autocast (the kernel computes in the input's dtype)"


def test_a_kernel_that_cannot_be_built(monkeypatch, calls, caplog):
    monkeypatch.setattr(extension, "_ops", None)
    monkeypatch.setattr(extension, "_error", "CalledProcessError: c++ not found")
    lstm = LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        lstm(x)  # auto: the pure-PyTorch loop, and why
    assert calls == {"compiled": 0, "pytorch": 1}
    assert caplog.records[0].getMessage() == (
        "LSTM fast path: the pure-PyTorch loop, for the compiled LSTM kernel cannot be built "
        "(CalledProcessError: c++ not found)"
    )
    with on_path("compiled"), pytest.raises(RuntimeError, match="LSTM_TRAIN_FAST_PATH=compiled, but the compiled"):
        lstm(x)


def test_an_unknown_path_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(compiled.ENV, "cuda")
    with pytest.raises(ValueError, match="LSTM_TRAIN_FAST_PATH=cuda is not one of auto, compiled, pytorch; unset it"):
        LSTM(3, 4)(torch.randn(5, 2, 3))


# Building -----------------------------------------------------------------------------------------------------


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next(tmp_path):
    """cpp_extension waits forever on the lock file of a build that was killed; ours removes it (safely: only
    while holding a lock that the OS releases when its holder dies), and waits while another holds that."""
    (tmp_path / "lock").touch()
    entered = threading.Event()

    def second_builder() -> None:
        with extension._build_lock(tmp_path):
            entered.set()

    with extension._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
        worker = threading.Thread(target=second_builder)
        worker.start()
        assert not entered.wait(0.5), "a second builder did not wait for the first"
    assert entered.wait(10)
    worker.join()


def test_a_machine_without_build_tools_falls_back_with_one_log_line(tmp_path):
    """No ninja and no compiler on the PATH, an empty extensions cache: the pure-PyTorch loop runs, after one line."""
    script = (
        "import logging, torch; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
        "from lstm_train.nn import LSTM; lstm = LSTM(3, 4, 2); "
        "[lstm(torch.randn(5, 2, 3))[0].sum().backward() for _ in range(2)]; print('trained')"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PATH": str(tmp_path), "CXX": "no-such-compiler"}
    env.pop(compiled.ENV, None)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "trained"
    lines = [line for line in run.stderr.splitlines() if "LSTM" in line]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("LSTM fast path: the pure-PyTorch loop, for the compiled LSTM kernel cannot be built (")
    assert not list(tmp_path.glob("*/*.so"))


@pytest.mark.slow
def test_processes_building_at_once_into_an_empty_cache(tmp_path):
    """Two processes start at once with an empty extensions cache: one builds, the other waits; both then run."""
    script = (
        "import torch; from lstm_train.nn import extension; extension.load(); "
        "x = torch.randn(3, 2, 4); w = torch.randn(8, 4), torch.randn(8, 2); "
        "print(extension.load().lstm_forward(x, torch.zeros(2, 2), torch.zeros(2, 2), *w, None, [], False, False, 0, "
        "None, 0.0, 0.0, [], None)"
        "[0].shape)"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, **pipes) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        assert out.strip() == "torch.Size([3, 2, 2])"
    assert len(list(tmp_path.glob("*/*.so"))) == 1
