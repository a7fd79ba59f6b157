"""Benchmark our LSTM against torch.nn.LSTM: forward (no grad) and forward+backward, medians and ratios.

All variants run in one process, interleaved round by round, with the same dtype, thread count,
shapes and weights, so the ratios are fair even on a noisy machine. Read the ratios, not the ms.
The variants: torch (torch.nn.LSTM), and our LSTM's code paths: compiled (backend fast on the C++ kernel),
fast (backend fast on the pure-PyTorch loop) and reference (backend reference).

    python scripts/bench_lstm.py                   # the table, then time per step at T = 32, 128, 512
    python scripts/bench_lstm.py --json            # the same as JSON, for machines
    python scripts/bench_lstm.py --profile         # where each variant spends its time (torch.profiler)
    python scripts/bench_lstm.py --step            # inference: one T=1 call at a time, carrying (h, c)
    python scripts/bench_lstm.py --step --profile  # where a T=1 call of each variant goes
    python scripts/bench_lstm.py --sample          # chars/s of CharLM.stream (what lstm-generate runs)
    python scripts/bench_lstm.py --autocast        # under bfloat16 autocast (and ours once more without it)
    python scripts/bench_lstm.py --autocast --products kernel onednn   # each way to bfloat16 products, side by side
    python scripts/bench_lstm.py --variant v       # our impls run LSTM variant v; "plain": the plain compiled cell
    python scripts/bench_lstm.py --variant v --zoneout 0.1   # and so --layer-norm, --recurrent-dropout, --weight-drop
    python scripts/bench_lstm.py --cells           # every variant and regulariser over the plain cell (f+b)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from lstm_train.nn import LSTM, PLAIN_CELL
from lstm_train.nn import VARIANTS as CELL_VARIANTS
from lstm_train.nn.compiled import BF16_ENV, BF16_SETTINGS, ENV
from lstm_train.runs.provenance import cpu, cpu_line

# (batch, time, input, hidden, layers, bidirectional)
SHAPES = [
    (64, 30, 10, 128, 2, False),
    (64, 128, 64, 256, 2, False),
    (32, 100, 128, 512, 1, False),
    (64, 50, 64, 128, 2, True),
    (128, 30, 10, 64, 2, False),  # the default lstm-train model (classifier on first_last)
]
STEP_SHAPE = (32, 64, 256, 1)  # (batch, input, hidden, layers) for the time-per-step table
STEP_LENGTHS = (32, 128, 512)
# (batch, input, hidden, layers) for --step: a char LM (batch 1) and beam search (batch 5)
INFER_SHAPES = [(1, 64, 128, 1), (1, 64, 256, 2), (5, 64, 128, 2), (5, 64, 256, 2)]
INFER_CALLS = 50  # T=1 calls per timed round, each from the previous call's (h, c)
# Our variants: name -> (backend, the LSTM_TRAIN_FAST_PATH it runs under)
VARIANTS = {"compiled": ("fast", "compiled"), "fast": ("fast", "pytorch"), "reference": ("reference", "auto"),
            "plain": ("fast", "compiled")}  # plain: the plain cell on the compiled kernel, beside a --variant
# --variant / --layer-norm / the regularisers: the cell of our impls other than "plain" (lstm_train/nn/variants.py)
CELL = dict(PLAIN_CELL)
PLAIN = dict(PLAIN_CELL)
# --cells: what is timed against the plain compiled cell (model.* settings beside PLAIN_CELL's); the elementwise
# variants and the regularisers run on the compiled kernel, layer norm and FGR on the pure-PyTorch loop
CELLS = {
    **{name: {"variant": name} for name in CELL_VARIANTS if name not in ("lstm", "fgr")},
    "v zoneout 0.1": {"variant": "v", "zoneout_c": 0.1, "zoneout_h": 0.1},
    "recurrent dropout 0.25": {"recurrent_dropout": 0.25},
    "weight drop 0.5": {"weight_drop": 0.5},
    "v layer norm": {"variant": "v", "layer_norm": True},
    "fgr": {"variant": "fgr"},
}


def select(name: str) -> None:
    """Set the code path of variant ``name`` (read by every forward call, so variants can alternate); a name's
    first word is the variant ("compiled float32": compiled, outside --autocast's autocast), a second word may be
    its bfloat16 products ("compiled onednn": LSTM_TRAIN_BF16_PRODUCTS=onednn)."""
    first, *rest = name.split()
    os.environ[ENV] = VARIANTS[first][1] if first in VARIANTS else "auto"
    os.environ[BF16_ENV] = rest[0] if rest and rest[0] in BF16_SETTINGS else "auto"


def make_models(shape, impls: list[str], dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    _, _, inp, hidden, layers, bidir = shape
    models: dict[str, torch.nn.Module] = {"torch": torch.nn.LSTM(inp, hidden, layers, bidirectional=bidir)}
    for name in impls:
        cell = PLAIN if name == "plain" else CELL
        models[name] = LSTM(inp, hidden, layers, bidirectional=bidir, backend=VARIANTS[name][0], **cell)
        plain_weights = cell["variant"] == "lstm" and not cell["layer_norm"]
        models[name].load_state_dict(models["torch"].state_dict(), strict=plain_weights)  # a variant: shared weights
    return {name: m.to(dtype) for name, m in models.items()}


# The clock of time_rounds: wall time, or with --cpu-time (one thread only) this thread's CPU time, which a machine
# shared with other jobs slows much less.
CLOCK = {"clock": time.perf_counter}
# --autocast: forward and backward of every variant under bfloat16 autocast (torch's oneDNN LSTM then computes in
# bfloat16; our compiled kernel takes bfloat16 products where the CPU has AVX512-BF16), and each of ours once
# more without it ("<name> float32"), alternating, so its speed-up is measured in the same rounds; with
# --products, ours once per way to its bfloat16 products ("<name> onednn"; auto: "<name>")
AUTOCAST: dict = {"enabled": False, "products": ["auto"]}


def time_rounds(fns: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Run every function once per round, in turn, and return each one's seconds per round."""
    for _ in range(warmup):
        for name, fn in fns.items():
            select(name)
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            select(name)
            clock = CLOCK["clock"]
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def forward(model: torch.nn.Module, x: torch.Tensor, autocast: bool = False) -> Callable[[], None]:
    def run():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            model(x)

    return run


def train_step(model: torch.nn.Module, x: torch.Tensor, autocast: bool = False) -> Callable[[], None]:
    xg = x.clone().requires_grad_()

    def run():
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out, (h, c) = model(xg)
        (out.float().sum() + h.float().sum() + c.float().sum()).backward()

    return run


def bench_shape(shape, impls: list[str], dtype: torch.dtype, repeats: int, warmup: int, pick=statistics.median) -> dict:
    batch, steps, inp = shape[:3]
    models = make_models(shape, impls, dtype)
    x = torch.randn(steps, batch, inp, dtype=dtype)
    runs = {n: (m, x, AUTOCAST["enabled"]) for n, m in models.items()}
    if AUTOCAST["enabled"]:
        for n in impls:
            del runs[n]
            runs.update({n if p == "auto" else f"{n} {p}": (models[n], x, True) for p in AUTOCAST["products"]})
        runs.update({f"{n} float32": (models[n], x, False) for n in impls})
    fwd = time_rounds({n: forward(*r) for n, r in runs.items()}, repeats, warmup)
    both = time_rounds({n: train_step(*r) for n, r in runs.items()}, repeats, warmup)
    row = {"shape": dict(zip(("batch", "time", "input", "hidden", "layers", "bidirectional"), shape, strict=True))}
    for kind, times in (("forward", fwd), ("forward_backward", both)):
        medians = {n: pick(t) for n, t in times.items()}
        row[kind] = {n: {"median_ms": 1e3 * med, "ratio": med / medians["torch"]} for n, med in medians.items()}
    return row


def bench_cells(shape, dtype: torch.dtype, repeats: int, warmup: int, pick=statistics.median) -> dict:
    """Forward+backward (training mode) of the plain compiled cell and of every entry of CELLS, alternating round by
    round, the same weights where they share them: each one's median ms and its ratio to the plain cell's."""
    batch, steps, inp, hidden, layers, bidir = shape
    torch.manual_seed(0)
    plain = LSTM(inp, hidden, layers, bidirectional=bidir, backend="fast").to(dtype)
    models = {"plain": plain}
    for name, settings in CELLS.items():
        models[name] = LSTM(inp, hidden, layers, bidirectional=bidir, backend="fast", **settings).to(dtype)
        models[name].load_state_dict(plain.state_dict(), strict=False)  # a variant's own parameters keep their init
    x = torch.randn(steps, batch, inp, dtype=dtype)
    times = time_rounds({n: train_step(m, x) for n, m in models.items()}, repeats, warmup)
    medians = {n: pick(t) for n, t in times.items()}
    return {"shape": dict(zip(("batch", "time", "input", "hidden", "layers", "bidirectional"), shape, strict=True)),
            "forward_backward": {n: {"median_ms": 1e3 * m, "ratio": m / medians["plain"]} for n, m in medians.items()}}


def bench_steps(impls: list[str], dtype: torch.dtype, repeats: int, warmup: int) -> list[dict]:
    batch, inp, hidden, layers = STEP_SHAPE
    rows = []
    for steps in STEP_LENGTHS:
        models = make_models((batch, steps, inp, hidden, layers, False), impls, dtype)
        x = torch.randn(steps, batch, inp, dtype=dtype, requires_grad=True)

        def step(model, x=x):
            def run():
                out, _ = model(x)
                out.sum().backward()

            return run

        times = time_rounds({n: step(m) for n, m in models.items()}, repeats, warmup)
        rows.append({"time": steps, **{n: 1e6 * statistics.median(t) / steps for n, t in times.items()}})
    return rows


def profile(shape, name: str, dtype: torch.dtype) -> None:
    model = make_models(shape, [name] if name in VARIANTS else [], dtype)[name]
    select(name)
    x = torch.randn(shape[1], shape[0], shape[2], dtype=dtype, requires_grad=True)
    for _ in range(2):
        model(x)[0].sum().backward()
    with torch.profiler.profile() as prof:
        out, _ = model(x)
        out.sum().backward()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def bench_infer(shape, impls: list[str], dtype: torch.dtype, repeats: int, warmup: int) -> dict:
    """Microseconds per T=1 call under inference_mode, the state carried from call to call (as decoding does)."""
    batch, inp, hidden, layers = shape
    models = make_models((batch, 1, inp, hidden, layers, False), impls, dtype)
    xs = torch.randn(INFER_CALLS, 1, batch, inp, dtype=dtype).unbind(0)

    def decode(model):
        def run():
            with torch.inference_mode():
                state = None
                for x in xs:
                    _, state = model(x, state)

        return run

    times = time_rounds({n: decode(m) for n, m in models.items()}, repeats, warmup)
    us = {n: 1e6 * statistics.median(t) / INFER_CALLS for n, t in times.items()}
    return {
        "shape": dict(zip(("batch", "input", "hidden", "layers"), shape, strict=True)),
        "us_per_call": us,
        "ratio": {n: v / us["torch"] for n, v in us.items()},
    }


def profile_infer(shape, name: str, dtype: torch.dtype) -> None:
    batch, inp, hidden, layers = shape
    model = make_models((batch, 1, inp, hidden, layers, False), [name] if name in VARIANTS else [], dtype)[name]
    select(name)
    x = torch.randn(1, batch, inp, dtype=dtype)
    with torch.inference_mode():
        state = None
        for _ in range(20):
            _, state = model(x, state)
        with torch.profiler.profile() as prof:
            for _ in range(INFER_CALLS):
                _, state = model(x, state)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def bench_sample(impls: list[str], repeats: int, length: int = 1000) -> dict[str, float]:
    """Characters per second of CharLM.stream (embedding 64, 2x256 LSTM, 63 symbols, random weights)."""
    from lstm_train.models import Stack
    from lstm_train.models.char import CharLM
    from lstm_train.tasks import Inputs

    models = {}
    for name in ["torch", *impls]:
        backend = VARIANTS[name][0] if name in VARIANTS else name
        torch.manual_seed(0)
        models[name] = CharLM(Inputs(vocab_size=63), Stack(256, 2, dropout=0.1, backend=backend), embedding_dim=64)
        if name != "torch":
            models[name].load_state_dict(models["torch"].state_dict())

    def sample(model):
        def run():
            model.generate([1, 2, 3], length, generator=torch.Generator().manual_seed(0))

        return run

    times = time_rounds({n: sample(m) for n, m in models.items()}, repeats, 1)
    return {n: length / statistics.median(t) for n, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impls", nargs="+", default=["compiled", "fast", "reference"], choices=list(VARIANTS),
                        help="our code paths")
    parser.add_argument("--variant", choices=CELL_VARIANTS, default="lstm",
                        help="the LSTM variant our impls run (adds the plain compiled cell as 'plain')")
    parser.add_argument("--layer-norm", action="store_true", help="our impls run the layer-normalised cell")
    parser.add_argument("--zoneout", type=float, default=0.0, help="our impls' zoneout of c and h (in training)")
    parser.add_argument("--recurrent-dropout", type=float, default=0.0, help="our impls' dropout on h between steps")
    parser.add_argument("--weight-drop", type=float, default=0.0, help="our impls' DropConnect on W_hh")
    parser.add_argument("--cells", action="store_true", help="forward+backward of every variant and regulariser "
                        "(CELLS) over the plain compiled cell's")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per variant (median reported)")
    parser.add_argument("--fastest", action="store_true",
                        help="each variant's fastest round instead of the median (a machine shared with other jobs)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time rounds in this thread's CPU time (with --threads 1; a shared machine slows it less)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs="+", choices=range(len(SHAPES)), help="only these shapes (0-based)")
    parser.add_argument("--no-steps", action="store_true", help="skip the time-per-step table")
    parser.add_argument("--quick", action="store_true", help="first shape only, 5 rounds: a smoke run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--profile", action="store_true", help="profile torch and --impls on each shape")
    parser.add_argument("--step", action="store_true", help="inference: us per T=1 call, state carried over")
    parser.add_argument("--sample", action="store_true", help="chars/s of sampling 1000 chars from a 2x256 CharLM")
    parser.add_argument("--autocast", action="store_true", help="the shape table under bfloat16 autocast (float32 "
                        "weights)")
    parser.add_argument("--products", nargs="+", choices=[p for p in BF16_SETTINGS if p != "fp32"], default=["auto"],
                        help="with --autocast: our bfloat16 products, each timed (LSTM_TRAIN_BF16_PRODUCTS)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 0")
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time measures one thread: use it with --threads 1")
    if args.cpu_time:
        CLOCK["clock"] = time.thread_time
    if args.autocast and (args.dtype != "float32" or args.step or args.sample or args.profile):
        parser.error("--autocast times the shape table of float32 models")
    if args.cells and (args.autocast or args.step or args.sample or args.profile):
        parser.error("--cells times training steps of the shape table: not with --autocast, --step, --sample or "
                     "--profile")
    if args.products != ["auto"] and not args.autocast:
        parser.error("--products times bfloat16 products: use it with --autocast")
    AUTOCAST.update(enabled=args.autocast, products=args.products)
    CELL.update(variant=args.variant, layer_norm=args.layer_norm, zoneout_c=args.zoneout, zoneout_h=args.zoneout,
                recurrent_dropout=args.recurrent_dropout, weight_drop=args.weight_drop)
    if CELL != PLAIN and "plain" not in args.impls:
        args.impls = ["plain", *args.impls]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    shapes, repeats = (SHAPES[:1], 5) if args.quick else (SHAPES, args.repeats)
    if args.shape:
        shapes = [SHAPES[i] for i in args.shape]

    if args.step or args.sample:
        return run_inference(args, dtype)
    if args.cells:
        return run_cells(args, shapes, dtype, repeats)
    if args.profile:
        for shape in shapes:
            for name in ["torch", *args.impls]:
                print(f"== {name}, shape {shape}")
                profile(shape, name, dtype)
        return 0

    env = {**cpu(), "torch": torch.__version__, "threads": args.threads, "cell": CELL,
           "dtype": "bfloat16 autocast" if args.autocast else args.dtype, "repeats": repeats,
           "statistic": "fastest" if args.fastest else "median", "clock": "cpu" if args.cpu_time else "wall"}
    rows, pick = [], min if args.fastest else statistics.median
    for shape in shapes:
        rows.append(bench_shape(shape, args.impls, dtype, repeats, args.warmup, pick))
        if not args.json:
            print_row(rows[-1], header=len(rows) == 1, env=env)
    steps = [] if args.quick or args.no_steps else bench_steps(args.impls, dtype, max(3, repeats // 3), 1)
    if args.json:
        json.dump({"env": env, "shapes": rows, "time_per_step_us": steps}, sys.stdout, indent=2)
        print()
    elif steps:
        print_steps(steps, args.impls)
    return 0


def run_cells(args: argparse.Namespace, shapes: list, dtype: torch.dtype, repeats: int) -> int:
    env = {**cpu(), "torch": torch.__version__, "threads": args.threads, "dtype": args.dtype, "repeats": repeats,
           "statistic": "fastest" if args.fastest else "median", "clock": "cpu" if args.cpu_time else "wall",
           "cells": CELLS}
    rows = []
    for shape in shapes:
        rows.append(bench_cells(shape, dtype, repeats, args.warmup, min if args.fastest else statistics.median))
        if not args.json:
            if len(rows) == 1:
                print(cpu_line(env))
                print(f"torch {env['torch']}, {env['threads']} threads, {env['dtype']}, {env['statistic']} of "
                      f"{repeats} rounds, {env['clock']} time: forward+backward over the plain compiled cell's")
                cols = ["(B, T, I, H, layers, bidir)", "plain ms", *CELLS]
                print("| " + " | ".join(cols) + " |")
                print("|" + "---|" * len(cols))
            row = rows[-1]
            cells = [shape_label(row["shape"]), f"{row['forward_backward']['plain']['median_ms']:.1f}"]
            cells += [f"{row['forward_backward'][n]['ratio']:.2f}" for n in CELLS]
            print("| " + " | ".join(cells) + " |", flush=True)
    if args.json:
        json.dump({"env": env, "shapes": rows}, sys.stdout, indent=2)
        print()
    return 0


def shape_label(s: dict) -> str:
    direction = "bi" if s["bidirectional"] else "uni"
    return f"({s['batch']}, {s['time']}, {s['input']}, {s['hidden']}, {s['layers']}, {direction})"


def run_inference(args: argparse.Namespace, dtype: torch.dtype) -> int:
    env = {**cpu(), "torch": torch.__version__, "threads": args.threads, "dtype": args.dtype,
           "repeats": args.repeats}
    result: dict = {"env": env}
    if args.step and args.profile:
        for shape in INFER_SHAPES:
            for name in ["torch", *args.impls]:
                print(f"== {name}, T=1 calls, (batch, input, hidden, layers) = {shape}")
                profile_infer(shape, name, dtype)
        return 0
    if args.step:
        result["step"] = [bench_infer(shape, args.impls, dtype, args.repeats, args.warmup) for shape in INFER_SHAPES]
    if args.sample:
        result["sample_chars_per_s"] = bench_sample(args.impls, max(1, args.repeats // 5))
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(cpu_line(env))
    print(f"torch {env['torch']}, {env['threads']} threads, {env['dtype']}, median of {args.repeats} rounds")
    if args.step:
        names = ["torch", *args.impls]
        print(f"\nus per T=1 call under inference_mode ({INFER_CALLS} calls a round, (h, c) carried over)")
        cols = ["(B, I, H, layers)", *(f"{n} us" for n in names), *(f"{n} ratio" for n in args.impls)]
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for row in result["step"]:
            cells = ["({batch}, {input}, {hidden}, {layers})".format(**row["shape"])]
            cells += [f"{row['us_per_call'][n]:.0f}" for n in names]
            cells += [f"{row['ratio'][n]:.2f}" for n in args.impls]
            print("| " + " | ".join(cells) + " |", flush=True)
    if args.sample:
        chars = result["sample_chars_per_s"]
        print("\nCharLM.stream, 1000 chars, 2x256 LSTM: " + ", ".join(f"{n} {v:.0f} chars/s" for n, v in chars.items()))
    return 0


def print_row(row: dict, header: bool, env: dict) -> None:
    impls = [n for n in row["forward"] if n != "torch"]
    if header:
        print(cpu_line(env))
        print(f"torch {env['torch']}, {env['threads']} threads, {env['dtype']}, our cell {env['cell']}, "
              f"{env['statistic']} of {env['repeats']} rounds, {env['clock']} time")
        cols = ["(B, T, I, H, layers, bidir)", "torch fwd ms", "torch f+b ms"]
        cols += [f"{n} {k}" for n in impls for k in ("fwd ratio", "f+b ratio")]
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
    shape = shape_label(row["shape"])
    torch_ms = (row["forward"]["torch"]["median_ms"], row["forward_backward"]["torch"]["median_ms"])
    cells = [shape, *(f"{ms:.1f}" for ms in torch_ms)]
    cells += [f"{row[k][n]['ratio']:.2f}" for n in impls for k in ("forward", "forward_backward")]
    print("| " + " | ".join(cells) + " |", flush=True)


def print_steps(rows: list[dict], impls: list[str]) -> None:
    b, i, h, layers = STEP_SHAPE
    print(f"\nforward+backward time per step (us), batch {b}, input {i}, hidden {h}, {layers} layer")
    names = ["torch", *impls]
    print("| T | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in rows:
        print(f"| {row['time']} | " + " | ".join(f"{row[n]:.0f}" for n in names) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
