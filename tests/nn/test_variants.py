"""The LSTM variants (Greff et al. 2017), layer norm, the recurrent regularisers and the user-cell extension point.

Each variant is checked in float64 against ``paper_lstm`` below: Greff et al.'s equations written out for one
unbatched sequence at a time, one step at a time, every gate with its own matrices sliced out of the module's
parameters, padding by running each sequence on its own length, the reverse direction by flipping it. It shares
no code with lstm_train.nn, so outputs and gradients (autograd through both) agree only if the equations do.
"""

from __future__ import annotations

import logging
import math
import re
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from lstm_train.config import ConfigError, validate
from lstm_train.nn import LSTM, VARIANTS, Cell, Noise, TorchLSTM, Variant, build_lstm, build_recurrent, variants
from lstm_train.nn.compiled import _announced
from lstm_train.nn.extension import bf16_products
from tests.helpers import grads
from tests.paths import PATHS, on_path

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"atol": 1e-10, "rtol": 1e-8}
LENGTHS = [5, 2, 4]


def paper_step(x, y, c, prev, p, name, ln):
    """One step of Greff et al.'s variant ``name`` for one sequence (vectors); z is the block input, y = h.
    With ``ln``, Ba et al.'s layer-normalised form. Returns (y, c, (i, f, z, o))."""
    H = c.shape[0]
    wx, ry = p["weight_ih"] @ x, p["weight_hh"] @ y
    b = p["bias_ih"] + p["bias_hh"]
    if ln:  # over the pre-activations of the gates the variant has
        has = torch.ones(4 * H, dtype=torch.bool)
        removed = {"nig": 0, "nfg": 1, "nog": 3, "cifg": 1}.get(name)
        if removed is not None:
            has[removed * H : (removed + 1) * H] = False
        wx, ry = torch.zeros_like(wx).masked_scatter(has, norm(wx[has], p["weight_ln_ih"][has], 0)), \
            torch.zeros_like(ry).masked_scatter(has, norm(ry[has], p["weight_ln_hh"][has], 0))
    total = wx + ry + b
    a = {gate: total[k * H : (k + 1) * H] for k, gate in enumerate("ifzo")}  # torch's row order: i, f, g(z), o
    if name == "fgr":  # 9 recurrent matrices from the previous i, f, o to each of i, f, o
        for r, gate in enumerate("ifo"):
            for s, source in enumerate("ifo"):
                a[gate] = a[gate] + p["weight_fgr"][r * H : (r + 1) * H, s * H : (s + 1) * H] @ prev[source]
    peep = name != "lstm"
    i = torch.ones(H, dtype=x.dtype) if name == "nig" else torch.sigmoid(a["i"] + (p["weight_ci"] * c if peep else 0))
    if name == "cifg":
        f = 1 - i
    elif name == "nfg":
        f = torch.ones(H, dtype=x.dtype)
    else:
        f = torch.sigmoid(a["f"] + (p["weight_cf"] * c if peep else 0))
    z = a["z"] if name == "niaf" else torch.tanh(a["z"])
    c = z * i + c * f
    o = torch.ones(H, dtype=x.dtype) if name == "nog" else torch.sigmoid(a["o"] + (p["weight_co"] * c if peep else 0))
    s = norm(c, p["weight_ln_c"], p["bias_ln_c"]) if ln else c
    y = (s if name == "noaf" else torch.tanh(s)) * o
    return y, c, {"i": i, "f": f, "z": z, "o": o}


def norm(v, gain, shift):
    mean = v.sum() / v.numel()
    var = ((v - mean) ** 2).sum() / v.numel()
    return (v - mean) / torch.sqrt(var + 1e-5) * gain + shift


def paper_lstm(lstm: LSTM, x, lengths, name, ln):
    """(out, h_n, c_n) of a stacked bidirectional (T, B, I) run, sequence by sequence and step by step."""
    T, B, _ = x.shape
    D, L, H = 2, lstm.num_layers, lstm.hidden_size
    outs, h_n, c_n = torch.zeros(T, B, D * H, dtype=x.dtype), [], []
    h_rows, c_rows = [[None] * B for _ in range(L * D)], [[None] * B for _ in range(L * D)]
    out_rows = []
    for b in range(B):
        seq = x[: lengths[b], b]
        for layer in range(L):
            directions = []
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                p = {k.removesuffix(suffix): v for k, v in lstm.named_parameters() if k.endswith(suffix)}
                y, c = torch.zeros(H, dtype=x.dtype), torch.zeros(H, dtype=x.dtype)
                prev = dict.fromkeys("ifo", torch.zeros(H, dtype=x.dtype))
                ys = []
                for x_t in seq.flip(0) if d else seq:
                    y, c, prev = paper_step(x_t, y, c, prev, p, name, ln)
                    ys.append(y)
                ys = torch.stack(ys)
                directions.append(ys.flip(0) if d else ys)
                h_rows[layer * D + d][b], c_rows[layer * D + d][b] = y, c
            seq = torch.cat(directions, -1)
        out_rows.append(seq)
    outs = torch.stack([F.pad(o, (0, 0, 0, T - o.shape[0])) for o in out_rows], 1)
    h_n = torch.stack([torch.stack(rows) for rows in h_rows])
    c_n = torch.stack([torch.stack(rows) for rows in c_rows])
    return outs, h_n, c_n


def random_lstm(name: str, ln: bool = False, backend: str = "fast", seed: int = 0, **kwargs) -> LSTM:
    """A float64 variant whose every parameter is random (peepholes and removed gates' rows too: the maths
    must not read the latter)."""
    torch.manual_seed(seed)
    lstm = LSTM(3, 4, num_layers=2, bidirectional=True, variant=name, layer_norm=ln, backend=backend, **kwargs).double()
    with torch.no_grad():
        for w in lstm.parameters():
            w.normal_(0, 0.6)
    return lstm


@pytest.mark.parametrize("ln", [False, True], ids=["", "ln"])
@pytest.mark.parametrize("backend", PATHS, indirect=True)
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_the_papers_equations(name, backend, ln):
    """On the compiled kernel (the elementwise variants; the others fall back), the pure-PyTorch loop and the
    reference."""
    lstm = random_lstm(name, ln, backend)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    ours = lstm(x, lengths=LENGTHS)
    out, (h_n, c_n) = ours
    expected = paper_lstm(lstm, x, LENGTHS, name, ln)
    for a, b in zip((out, h_n, c_n), expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    inputs = [x, *lstm.parameters()]
    for a, b in zip(grads((out, h_n, c_n), inputs), grads(expected, inputs), strict=True):
        torch.testing.assert_close(a, b, **TOL)


KERNEL_VARIANTS = [v for v in VARIANTS if v != "fgr"]


def test_kernel_flags_are_the_kernels_enum():
    """variants.KERNEL_FLAGS says what csrc/recurrence.cpp's enum does: each variant's flag has the value of the
    enumerator of the change it makes (read from the source, which the build compiles)."""
    source = (Path(variants.__file__).parent / "csrc" / "recurrence.cpp").read_text()
    (body,) = re.findall(r"enum\s*:\s*int64_t\s*\{([^}]*)\}", source)
    enum = {name: int(value) for name, value in re.findall(r"(k\w+)\s*=\s*(\d+)", body)}
    by_variant = {"nig": "kNoInputGate", "nfg": "kNoForgetGate", "nog": "kNoOutputGate", "niaf": "kNoInputAct",
                  "noaf": "kNoOutputAct", "cifg": "kCoupled"}
    assert sorted(enum) == sorted(by_variant.values())
    assert {name: enum[flag] for name, flag in by_variant.items()} == variants.KERNEL_FLAGS


@pytest.mark.parametrize("zoneout", [False, True], ids=["", "zoneout"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", KERNEL_VARIANTS)
def test_the_kernels_blocked_loop_matches_the_reference(name, dtype, zoneout, compiled_kernel):
    """Enough rows for the kernel's register-blocked loop (the test above has few: ATen's products), in float64 and
    in float32 (its own exp), outputs and gradients, padded, stacked, bidirectional; zoneout at test (its
    expectation, deterministic)."""
    lstm = random_lstm(name, zoneout_c=0.3 if zoneout else 0.0, zoneout_h=0.2 if zoneout else 0.0).to(dtype)
    lstm.train(not zoneout)
    x = torch.randn(9, 7, 3, dtype=dtype, requires_grad=True)
    lengths = [9, 3, 8, 1, 9, 5, 2]
    results = []
    for path in ("compiled", "reference"):
        with on_path(path) as backend:
            lstm.backend = backend
            out, (h, c) = lstm(x, lengths=lengths)
            results.append([out, h, c, *grads((out, h, c), [x, *lstm.parameters()])])
    tol = TOL if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize(("name", "ln"), [("v", True), ("cifg", False), ("fgr", False), ("nig", False)])
def test_gradcheck(name, ln):
    torch.manual_seed(0)
    lstm = LSTM(2, 2, bidirectional=True, variant=name, layer_norm=ln).double()
    names = [n for n, _ in lstm.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def run(x, *params):
        out, (h, c) = functional_call(lstm, dict(zip(names, params, strict=True)), (x,), {"lengths": [3, 2]})
        return out, h, c

    params = [p.detach().clone().requires_grad_() for p in lstm.parameters()]
    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize("name", ["lstm", "v", "fgr"])
def test_fast_and_reference_agree_batch_first_with_state(name):
    fast, ref = random_lstm(name, backend="fast"), random_lstm(name, backend="reference")
    fast.batch_first = ref.batch_first = True
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    hx = (torch.randn(4, 3, 4, dtype=torch.float64), torch.randn(4, 3, 4, dtype=torch.float64))
    for a, b in zip(fast(x, hx, lengths=LENGTHS, return_gates=True), ref(x, hx, lengths=LENGTHS, return_gates=True),
                    strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_plain_variant_with_layer_norm_off_is_todays_cell():
    """Variant("lstm") through the cell loop computes what the plain (hand-written / compiled) path does."""
    plain = random_lstm("lstm")
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    looped = LSTM(3, 4, num_layers=2, bidirectional=True, cell=Variant("lstm")).double()
    looped.load_state_dict(plain.state_dict() | {"cell": "variant=lstm"})
    for a, b in zip(plain(x, lengths=LENGTHS)[0], looped(x, lengths=LENGTHS)[0], strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(("name", "gate", "constant"), [("nig", 0, 1.0), ("nfg", 1, 1.0), ("nog", 3, 1.0)])
def test_a_removed_gate_is_recorded_as_its_constant(name, gate, constant):
    lstm = random_lstm(name)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    with lstm.recording(grads=True) as calls:
        out, _ = lstm(x, lengths=LENGTHS)
        out.sum().backward()
    rec = calls[0]
    valid = (torch.arange(5)[:, None] < torch.tensor(LENGTHS)[None, :]).double()  # (T, B)
    for gates in rec.gates:
        torch.testing.assert_close(gates[:, :, gate], constant * valid[..., None].expand(5, 3, 4))
    assert rec.constants == {("input", "forget", "candidate", "output")[gate]: "none: 1"}  # what the plots say
    assert all(dh.shape == (5, 3, 4) for dh in rec.hidden_grads)


def test_cifg_records_f_as_one_minus_i():
    lstm = random_lstm("cifg")
    _, _, gates = lstm(torch.randn(4, 2, 3, dtype=torch.float64), return_gates=True)
    torch.testing.assert_close(gates[0][:, :, 1], 1 - gates[0][:, :, 0])


@pytest.mark.parametrize(("variant", "gate"), [("nig", 0), ("nfg", 1), ("nog", 3), ("cifg", 1)])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_removed_gates_rows_start_at_zero_and_get_no_gradient(variant, gate, layer_norm):
    torch.manual_seed(0)
    lstm = LSTM(3, 4, variant=variant, layer_norm=layer_norm)
    rows = slice(gate * 4, (gate + 1) * 4)
    assert lstm.weight_ih_l0[rows].abs().sum() == 0 and lstm.weight_hh_l0[rows].abs().sum() == 0
    lstm(torch.randn(5, 2, 3))[0].sum().backward()
    assert lstm.weight_ih_l0.grad[rows].abs().sum() == 0 and lstm.weight_hh_l0.grad[rows].abs().sum() == 0
    assert lstm.weight_hh_l0.grad.abs().sum() > 0


def test_removed_gates_rows_do_not_change_the_output():
    """Not even with layer norm, whose statistics cover only the gates the variant has."""
    torch.manual_seed(0)
    lstm, x = LSTM(3, 4, variant="nig", layer_norm=True), torch.randn(5, 2, 3)
    before = lstm(x)[0]
    with torch.no_grad():
        lstm.weight_ih_l0[:4].normal_()
    torch.testing.assert_close(lstm(x)[0], before)


def test_nig_has_no_input_peephole():
    lstm = LSTM(3, 4, variant="nig")
    assert {n for n, _ in lstm.named_parameters()} >= {"weight_cf_l0", "weight_co_l0"}
    assert not hasattr(lstm, "weight_ci_l0")


def test_cifg_starts_with_the_forget_bias():
    lstm = LSTM(3, 4, variant="cifg", forget_bias=2.0)
    f = 1 - torch.sigmoid(lstm.bias_ih_l0[:4] + lstm.bias_hh_l0[:4])
    torch.testing.assert_close(f, torch.sigmoid(torch.tensor(2.0)).expand(4))


# ---- state dicts ---------------------------------------------------------------------------------------------


def test_todays_state_dict_loads_into_a_variants_shared_weights():
    theirs = torch.nn.LSTM(3, 4, 2)
    lstm = LSTM(3, 4, 2, variant="v")
    missing, unexpected = lstm.load_state_dict(theirs.state_dict(), strict=False)
    assert sorted(missing) == sorted(["cell", *(f"weight_c{g}_l{k}" for g in "ifo" for k in (0, 1))])
    assert not unexpected
    assert torch.equal(lstm.weight_hh_l1, theirs.weight_hh_l1)
    plain = LSTM(3, 4, 2)  # and the plain cell's state_dict is torch's, both ways
    plain.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(plain.state_dict())


@pytest.mark.parametrize(("saved", "loaded"), [("v", "noaf"), ("lstm", "v"), ("v", "lstm"), ("nog", "nig")])
def test_a_state_dict_of_another_variant_is_refused(saved, loaded):
    state = LSTM(3, 4, variant=saved).state_dict()
    with pytest.raises(RuntimeError, match=r'(Unexpected|Missing) key.*"cell"'):
        LSTM(3, 4, variant=loaded).load_state_dict(state)
    LSTM(3, 4, variant=saved).load_state_dict(state)  # its own loads


def test_a_state_dict_with_layer_norm_is_refused_without():
    with pytest.raises(RuntimeError, match=r'Unexpected key.*"cell"'):
        LSTM(3, 4, variant="v").load_state_dict(
            {**LSTM(3, 4, variant="v").state_dict(), "cell": "variant=v with layer norm"})


# ---- regularisers ----------------------------------------------------------------------------------------------


class Spy(Cell):
    """The plain cell, recording what each step receives and returns."""

    def __init__(self) -> None:
        self.inner, self.seen = Variant("lstm"), []

    def step(self, xp, h, c, prev, p):
        h_new, c_new, gates = self.inner.step(xp, h, c, prev, p)
        self.seen.append((h.detach(), c.detach(), h_new.detach(), c_new.detach()))
        return h_new, c_new, gates


def spied(backend: str = "fast", **kwargs) -> tuple[LSTM, Spy]:
    torch.manual_seed(0)
    spy = Spy()
    return LSTM(3, 8, cell=spy, backend=backend, **kwargs).double(), spy


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_recurrent_dropout_is_one_mask_per_sequence(backend):
    lstm, spy = spied(backend, recurrent_dropout=0.5)
    x = torch.randn(6, 16, 3, dtype=torch.float64)
    out, _ = lstm(x)
    masks = [h_in / out[t - 1] for t, (h_in, *_) in enumerate(spy.seen) if t > 0]
    for mask in masks:
        torch.testing.assert_close(mask, masks[0])
    assert set(masks[0].round().unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(masks[0][0], masks[0][1])  # per sequence, not per batch
    spy.seen.clear()
    out, _ = lstm.eval()(x)
    for t, (h_in, *_) in enumerate(spy.seen[1:], start=1):
        torch.testing.assert_close(h_in, out[t - 1])


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_zoneout_in_training_keeps_each_unit_or_takes_the_new_one(backend):
    lstm, spy = spied(backend, zoneout_c=0.5, zoneout_h=0.3)
    out, (_, c_n) = lstm(torch.randn(30, 16, 3, dtype=torch.float64))
    kept = {"c": [], "h": []}
    for t, (h_in, c_in, h_new, c_new) in enumerate(spy.seen):
        c_out = spy.seen[t + 1][1] if t + 1 < len(spy.seen) else c_n[0]
        for kind, old, new, got in (("c", c_in, c_new, c_out), ("h", h_in, h_new, out[t])):
            assert torch.all((got == old) | (got == new))
            if t > 0:
                kept[kind].append((got == old) & (got != new))
    assert abs(torch.stack(kept["c"]).double().mean() - 0.5) < 0.05
    assert abs(torch.stack(kept["h"]).double().mean() - 0.3) < 0.05


@pytest.mark.parametrize(("name", "rows"), [("v", 2), ("cifg", 2), ("noaf", 7)])
def test_zoneout_on_the_kernel_in_training(name, rows, compiled_kernel):
    """Each unit of the carried c is its previous value or the cell's new one, and the kernel's gradient is that of
    its forward (the masks made the same by a seed); ``rows``: 2 takes ATen's products, 7 the blocked loop."""
    torch.manual_seed(0)
    with on_path("compiled"):
        lstm = LSTM(3, 4, variant=name, zoneout_c=0.5, zoneout_h=0.3).double()
        with torch.no_grad():
            for w in lstm.parameters():
                w.normal_(0, 0.6)
        x = torch.randn(5, rows, 3, dtype=torch.float64, requires_grad=True)
        with lstm.recording() as calls:
            lstm(x)
        (gates,), (c,) = calls[0].gates, calls[0].cells  # c: the state carried on
        i, f, g = gates[:, :, 0], gates[:, :, 1], gates[:, :, 2]
        c_prev = torch.cat([torch.zeros_like(c[:1]), c[:-1]])
        new = f * c_prev + i * g
        kept = torch.isclose(c, c_prev, atol=1e-12, rtol=0)
        assert torch.all(kept | torch.isclose(c, new, atol=1e-12, rtol=0))
        assert 0.3 < (kept & ~torch.isclose(c_prev, new)).double().mean() < 0.7

        def run(x):
            torch.manual_seed(1)
            out, (h, c) = lstm(x, lengths=[5, 3][:rows] + [4] * (rows - 2))
            return out, h, c

        assert torch.autograd.gradcheck(run, (x,))


# 7 rows take the kernel's blocked loop, 2 rows ATen's products
ROWS = pytest.mark.parametrize("rows", [7, 2], ids=["blocked", "aten"])


@ROWS
@pytest.mark.parametrize("name", ["lstm", "v", "nog"])
def test_recurrent_dropout_on_the_kernel_matches_the_reference(name, rows, compiled_kernel):
    """In training: both paths draw one mask per layer and direction in the same order, so a seed gives both the
    same masks; outputs and gradients, blocked loop and ATen's products (few rows), padded, bidirectional."""
    lstm = random_lstm(name, recurrent_dropout=0.4)
    x = torch.randn(9, rows, 3, dtype=torch.float64, requires_grad=True)
    lengths = [9, 3, 8, 1, 9, 5, 2][:rows]
    results = []
    for path in ("compiled", "reference"):
        with on_path(path) as backend:
            lstm.backend = backend
            torch.manual_seed(3)
            out, (h, c) = lstm(x, lengths=lengths)
            results.append([out, h, c, *grads((out, h, c), [x, *lstm.parameters()])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@ROWS
@pytest.mark.parametrize("name", ["lstm", "v", "cifg"])
def test_a_seed_draws_the_same_regularisers_on_every_path(name, rows, compiled_kernel):
    """In training with zoneout and recurrent dropout, one seed gives the kernel, the pure-PyTorch loop and the
    reference the same masks (each draws every layer and direction's zoneout masks before its loop, then its dropout
    mask): the same outputs and gradients, padded, stacked, bidirectional, blocked loop and ATen's products."""
    lstm = random_lstm(name, zoneout_c=0.3, zoneout_h=0.3, recurrent_dropout=0.2)
    x = torch.randn(9, rows, 3, dtype=torch.float64, requires_grad=True)
    lengths = [9, 3, 8, 1, 9, 5, 2][:rows]
    results = []
    for path in PATHS:
        with on_path(path) as backend:
            lstm.backend = backend
            torch.manual_seed(3)
            out, (h, c) = lstm(x, lengths=lengths)
            results.append([out, h, c, *grads((out, h, c), [x, *lstm.parameters()])])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_zoneout_at_test_is_its_expectation_and_deterministic():
    """At test each unit is the training masks' mean mix of old and new: the rate rounded down to 2^-16 as training
    rounds it (0.1 and 0.3 are not multiples of it; the unrounded rate differs by ~1e-5)."""
    lstm, spy = spied("fast", zoneout_c=0.1, zoneout_h=0.3)
    lstm.eval()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    out, (_, c_n) = lstm(x)
    zc, zh = int(0.1 * 65536) / 65536, int(0.3 * 65536) / 65536
    for t, (h_in, c_in, h_new, c_new) in enumerate(spy.seen):
        c_out = spy.seen[t + 1][1] if t + 1 < len(spy.seen) else c_n[0]
        torch.testing.assert_close(c_out, zc * c_in + (1 - zc) * c_new, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[t], zh * h_in + (1 - zh) * h_new, rtol=1e-12, atol=1e-12)
    assert torch.equal(lstm(x)[0], out)


def test_mix32_is_the_unsigned_32_bit_hash_without_int64_overflow():
    """variants.mix32 on int64 tensors equals the hash computed on Python's unbounded ints (wrapped to 32 bits), at
    the extremes too: its products never overflow int64."""
    def mix(x: int) -> int:
        x ^= x >> 16
        x = x * 0x7FEB352D & 0xFFFFFFFF
        x ^= x >> 15
        x = x * 0x846CA68B & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFF, 0xFFFF0000, 0xFFFFFFFE, 0xFFFFFFFF]
    values += torch.randint(0, 1 << 32, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    assert variants.mix32(torch.tensor(values)).tolist() == [mix(v) for v in values]


def test_zoneout_masks_are_bernoulli_at_their_rate_and_independent():
    """A million units of one seed: each mask keeps within a binomial bound (5 sigma) of its rate (rounded down to
    2^-16), and c's and h's masks, neighbouring steps, rows and units, and two seeds are independent (the joint rate
    is the product); no two steps, rows or units share a mask."""
    T, B, H = 64, 32, 512
    bits = variants.zoneout_bits((123, 456), T, B, H, torch.device("cpu"))
    other = variants.zoneout_bits((124, 456), T, B, H, torch.device("cpu"))
    rate = {"c": 0.1, "h": 0.3}
    p = {k: int(r * 65536) / 65536 for k, r in rate.items()}
    keep_c, keep_h = (bits >> 16) < int(rate["c"] * 65536), (bits & 0xFFFF) < int(rate["h"] * 65536)

    def within_bound(kept: Tensor, expected: float) -> bool:
        return abs(kept.double().mean().item() - expected) < 5 * math.sqrt(expected * (1 - expected) / kept.numel())

    assert within_bound(keep_c, p["c"]) and within_bound(keep_h, p["h"])
    assert within_bound(keep_c & keep_h, p["c"] * p["h"])
    assert within_bound(keep_c & ((other >> 16) < int(rate["c"] * 65536)), p["c"] ** 2)
    for dim in range(3):
        n = keep_h.shape[dim]
        a, b = keep_h.narrow(dim, 1, n - 1), keep_h.narrow(dim, 0, n - 1)
        assert within_bound(a & b, p["h"] ** 2)
        assert not (a == b).movedim(dim, 0).flatten(1).all(1).any()  # no two neighbours share a whole mask


@ROWS
def test_the_kernels_zoneout_masks_are_zoneout_bits(rows, compiled_kernel):
    """The kernel hashes, where it uses them, the very masks ``variants.zoneout_bits`` states: the c and h it carries
    keep their previous values exactly where those masks say (hidden size 20: a vector's tail lanes too)."""
    torch.manual_seed(0)
    T, H = 6, 20
    with on_path("compiled"):
        lstm = LSTM(3, H, zoneout_c=0.4, zoneout_h=0.3).double()
        x = torch.randn(T, rows, 3, dtype=torch.float64)
        torch.manual_seed(5)
        with torch.no_grad(), lstm.recording() as calls:
            out, _ = lstm(x)
    torch.manual_seed(5)
    bits = variants.zoneout_bits(Noise(0.4, 0.3, training=True).zoneout_seed(), T, rows, H, torch.device("cpu"))
    (gates,), (c,) = calls[0].gates, calls[0].cells
    i, f, g, o = gates.unbind(2)
    c_prev = torch.cat([torch.zeros_like(c[:1]), c[:-1]])
    h_prev = torch.cat([torch.zeros_like(out[:1]), out[:-1]])
    c_new = f * c_prev + i * g
    for got, old, new, keep in ((c, c_prev, c_new, (bits >> 16) < int(0.4 * 65536)),
                                (out, h_prev, o * torch.tanh(c_new), (bits & 0xFFFF) < int(0.3 * 65536))):
        seen = ~torch.isclose(old, new, atol=1e-9, rtol=0)  # where keeping and not keeping differ
        assert seen.double().mean() > 0.9
        assert torch.equal(got[keep], old[keep])  # kept exactly
        torch.testing.assert_close(got[~keep], new[~keep], atol=1e-12, rtol=0)


def test_zoneout_masks_differ_by_layer_direction_and_call_and_not_by_threads(compiled_kernel):
    """On the kernel (in training): every layer and direction and every call draws its own masks, and the number of
    threads changes nothing (each unit's mask is a function of its step, row and unit, not of who computes it)."""
    torch.manual_seed(0)
    lstm = LSTM(16, 64, num_layers=2, bidirectional=True, variant="v", zoneout_c=0.3, zoneout_h=0.2)
    x = torch.randn(40, 24, 16, requires_grad=True)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count, seed in ((1, 7), (2, 7), (2, None)):  # the third call: the generator's next seed
            torch.set_num_threads(count)
            if seed is not None:
                torch.manual_seed(seed)
            with on_path("compiled"), lstm.recording() as calls:
                out, (h, c) = lstm(x)
            runs.append((out, grads((out, h, c), [x, *lstm.parameters()]), calls[0].cells))
    finally:
        torch.set_num_threads(threads)
    (out1, grads1, cells), (out2, grads2, _), (out3, _, _) = runs
    assert torch.equal(out1, out2) and not torch.equal(out2, out3)
    for a, b in zip(grads1, grads2, strict=True):
        torch.testing.assert_close(a, b)
    kept = [torch.eq(cs[1:], cs[:-1]) for cs in cells]  # c kept where it equals the previous step's
    assert all(0.25 < k.float().mean() < 0.35 for k in kept)
    assert all(not torch.equal(a, b) for k, a in enumerate(kept) for b in kept[k + 1 :])


def test_zoneout_of_h_with_a_projection():
    """With proj_size, h's masks are (T, B, proj_size), the first units' of zoneout_bits: both PyTorch paths keep the
    same units of h at that rate (it raised a size mismatch before)."""
    torch.manual_seed(0)
    lstm = LSTM(3, 8, proj_size=4, zoneout_h=0.5).double()
    x = torch.randn(30, 6, 3, dtype=torch.float64)
    outs = []
    for backend in ("fast", "reference"):
        lstm.backend = backend
        torch.manual_seed(3)
        outs.append(lstm(x)[0])
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    assert outs[0].shape == (30, 6, 4) and 0.4 < torch.eq(outs[0][1:], outs[0][:-1]).double().mean() < 0.6


@pytest.mark.skipif(not bf16_products(), reason="no AVX512-BF16 on this CPU")
def test_a_variant_with_zoneout_takes_bf16_products_under_autocast_and_the_same_masks(compiled_kernel):
    """Under autocast the kernel runs V with zoneout on bfloat16 products (its cell states differ from float32's),
    with the same masks (one seed keeps the same units of c, exactly their previous values); a backward inside the
    autocast block runs, recurrent dropout's (float32 products) too."""
    torch.manual_seed(0)
    lstm = LSTM(8, 32, variant="v", zoneout_c=0.3, zoneout_h=0.2)
    x = torch.randn(10, 8, 8)
    cells = []
    for autocast in (False, True):
        torch.manual_seed(3)
        with on_path("compiled"), torch.autocast("cpu", torch.bfloat16, enabled=autocast), lstm.recording() as calls:
            lstm(x)[0].sum().backward()
        cells.append(calls[0].cells[0])
    kept = [torch.eq(c[1:], c[:-1]) for c in cells]
    assert 0.2 < kept[0].float().mean() < 0.4 and torch.equal(kept[0], kept[1])
    assert not torch.allclose(cells[0], cells[1], atol=1e-4)  # bfloat16 products
    dropout = LSTM(8, 32, variant="v", recurrent_dropout=0.2)  # float32 products: their backward's GEMMs stay float32
    with on_path("compiled"), torch.autocast("cpu", torch.bfloat16):
        dropout(x)[0].sum().backward()
    assert dropout.weight_hh_l0.grad.dtype == torch.float32


@pytest.mark.parametrize("variant", ["lstm", "v"])
def test_weight_drop_is_one_mask_on_w_hh_per_call(variant):
    torch.manual_seed(0)
    lstm = LSTM(3, 8, variant=variant, weight_drop=0.5).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    out, _ = lstm(x)
    (grad,) = torch.autograd.grad(out.sum(), lstm.weight_hh_l0)
    kept = grad != 0
    assert 0.3 < kept.double().mean() < 0.7
    masked = LSTM(3, 8, variant=variant).double().eval()
    masked.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        masked.weight_hh_l0.mul_(kept * 2.0)
    torch.testing.assert_close(masked(x)[0], out)  # the same mask at every step
    lstm.eval()
    assert torch.equal(lstm(x)[0], lstm(x)[0])


@pytest.mark.parametrize(("build", "message"), [
    (partial(LSTM, 3, 4, zoneout_c=1.0), r"must be a number in|dropout should be"),
    (partial(LSTM, 3, 4, zoneout_h=-0.1), r"must be a number in|dropout should be"),
    (partial(LSTM, 3, 4, recurrent_dropout=1), r"must be a number in|dropout should be"),
    (partial(LSTM, 3, 4, weight_drop=2.0), r"must be a number in|dropout should be"),
    (partial(LSTM, 3, 4, variant="x"), "unknown LSTM variant 'x'; choose one of lstm, v"),
    (partial(build_lstm, "torch", 3, 4, variant="v"), "need our LSTM"),
    (partial(build_recurrent, "gru", "fast", 3, 4, zoneout_c=0.1), "a GRU has no such cell"),
], ids=["zoneout_c", "zoneout_h", "recurrent_dropout", "weight_drop", "variant", "torch-variant", "gru-zoneout"])
def test_regularisers_are_checked(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_torch_backend_without_a_variant_is_torchs_lstm():
    assert isinstance(build_lstm("torch", 3, 4), TorchLSTM)


def test_the_fast_path_says_once_where_a_variant_runs(caplog, compiled_kernel):
    _announced.clear()
    with on_path("compiled"), caplog.at_level(logging.INFO, logger="lstm_train.nn.compiled"):
        for name in ("v", "v", "fgr", "fgr"):
            LSTM(3, 4, variant=name)(torch.randn(2, 2, 3))
    lines = [r.getMessage() for r in caplog.records if "variant=" in r.getMessage()]
    assert lines == [
        "LSTM fast path: the compiled C++ kernel (lstm_train/nn/csrc/recurrence.cpp), for variant=v",
        "LSTM fast path: the pure-PyTorch loop through autograd, for variant=fgr: the kernel has the elementwise "
        "variants only (not layer norm, not FGR)",
    ]


@pytest.mark.parametrize(("name", "zoneout"), [("v", 0.0), ("cifg", 0.0), ("noaf", 0.0), ("v", 0.4)])
def test_double_backward_of_a_variant_on_the_kernel(name, zoneout, compiled_kernel):
    torch.manual_seed(0)
    with on_path("compiled"):
        lstm = LSTM(2, 2, variant=name, zoneout_c=zoneout, zoneout_h=zoneout / 2, recurrent_dropout=zoneout).double()
        with torch.no_grad():
            for w in lstm.parameters():
                w.normal_(0, 0.6)
        x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
        peep = lstm.weight_ci_l0

        def run(x, peep):
            torch.manual_seed(1)  # the same zoneout masks every call
            return torch.func.functional_call(lstm, {"weight_ci_l0": peep}, (x,), {"lengths": [3, 2]})[0]

        assert torch.autograd.gradgradcheck(run, (x, peep.detach().clone().requires_grad_()))


# ---- your own cell ---------------------------------------------------------------------------------------------


class Coupled(Cell):
    """A toy cell of the kind a user writes: coupled gates, c = (1 - i) c + i * scale * tanh(a_g), no forget
    rows read, and a parameter of its own (``scale``)."""

    def parameter_shapes(self, hidden_size, state_size):
        return {"scale": (hidden_size,)}

    def reset_parameters(self, params):
        params["scale"].fill_(1.0)

    def step(self, xp, h, c, prev, p):
        a_i, _, a_g, a_o = (xp + h @ p["weight_hh"].t()).chunk(4, dim=-1)
        i, o = torch.sigmoid(a_i), torch.sigmoid(a_o)
        g = p["scale"] * torch.tanh(a_g)
        c = (1 - i) * c + i * g
        h = o * torch.tanh(c)
        return h, c, torch.stack([i, 1 - i, g, o], dim=-2)


def test_your_own_cell_trains_end_to_end():
    """Stacked, bidirectional, padded, recorded, trained through autograd: tell the sign of a sequence's first
    input among noise."""
    torch.manual_seed(0)
    lstm = LSTM(2, 8, num_layers=2, bidirectional=True, batch_first=True, cell=Coupled())
    head = torch.nn.Linear(4 * 8, 2)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    scale_before = lstm.scale_l1_reverse.detach().clone()

    def batch(n=32):
        x = torch.randn(n, 7, 2)
        lengths = torch.randint(2, 8, (n,))
        return x, lengths, (x[:, 0, 0] > 0).long()

    for _ in range(30):
        x, lengths, y = batch()
        _, (h_n, _) = lstm(x, lengths=lengths)
        loss = F.cross_entropy(head(h_n.transpose(0, 1).reshape(len(x), -1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, lengths, y = batch(256)
    with torch.no_grad(), lstm.recording() as calls:
        _, (h_n, _) = lstm(x, lengths=lengths)
        accuracy = (head(h_n.transpose(0, 1).reshape(len(x), -1)).argmax(1) == y).double().mean()
    assert accuracy > 0.9
    assert not torch.equal(lstm.scale_l1_reverse, scale_before)
    assert calls[0].gates[3].shape == (256, 7, 4, 8) and calls[0].names[3] == "l1_reverse"
    state = lstm.state_dict()
    assert state["cell"] == "Coupled" and "scale_l0" in state


def test_a_cell_and_a_variant_do_not_mix():
    with pytest.raises(ValueError, match="pass a cell or a variant"):
        LSTM(3, 4, variant="v", cell=Coupled())
    with pytest.raises(TypeError, match=r"cell should be a lstm_train\.nn\.Cell"):
        LSTM(3, 4, cell=object())
    # the cell is the one statement of which it is: no variant / layer_norm attributes beside it to go stale
    for lstm in (LSTM(3, 4, variant="v", layer_norm=True), LSTM(3, 4, cell=Variant("nog"))):
        assert not hasattr(lstm, "variant") and not hasattr(lstm, "layer_norm")
    assert LSTM(3, 4, variant="v", layer_norm=True).cell == Variant("v", True)


def test_noise_is_checked():
    with pytest.raises(ValueError, match=r"zoneout_c must be a number in \[0, 1\), got 1"):
        Noise(zoneout_c=1)


# ---- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.variant=v", "model.cell=gru"], "model.cell: model.variant=v changes an LSTM's cell; model.cell=gru"),
        (["model.zoneout_h=0.1", "model.backend=torch"], "model.backend: model.zoneout_h=0.1 needs our LSTM"),
        (["model.zoneout_c=1.0"], r"model.zoneout_c: must be in \[0, 1\), got 1.0"),
        (["model.variant=nfg", "model.forget_bias=chrono", "model.chrono_max_len=10"],
         "model.forget_bias: chrono initialises the forget gate, which model.variant=nfg has not"),
        (["model.variant=peephole"], "model.variant: must be one of lstm, v, nig"),
        (["model=seq2seq", "task=reverse", "model.variant=fgr"],
         "model.variant: fgr's gates read the previous step's gates, which \\(h, c\\) do not carry, and seq2seq"),
        (["model=seq2seq", "task=reverse", "model.weight_drop=0.1", "model.teacher_forcing_ratio=0.5"],
         "model.weight_drop: draws one mask per sequence, but with model.teacher_forcing_ratio < 1 the decoder"),
    ],
)
def test_config_mistakes_are_one_line(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=f"^{message}") as info:
        validate(compose_cfg(*overrides))
    assert "\n" not in str(info.value)


def test_every_model_passes_the_variant_on(compose_cfg):
    from lstm_train.models import build_model
    from lstm_train.tasks import build_task

    cfg = compose_cfg("model.variant=fgr", "model.layer_norm=true", "model.zoneout_c=0.2", "model.weight_drop=0.1")
    validate(cfg)
    model = build_model(cfg.model, build_task(cfg.task))
    lstm = next(m for m in model.modules() if isinstance(m, LSTM))
    assert lstm.cell == Variant("fgr", layer_norm=True) and lstm.zoneout_c == 0.2 and lstm.weight_drop == 0.1
