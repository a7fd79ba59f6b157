"""Gate plots from a checkpoint: what ``lstm-visualize`` (or ``scripts/visualize_gates.py``) writes.

From a checkpoint (the model and its task state, as lstm-generate rebuilds them) and one input -- the task
makes it (:meth:`~lstm_train.tasks.Task.example`): a seeded first_last sequence, a text for char and
text-classification models, a sentence (words split at whitespace) for a tagger -- the LSTM's own recorded gates
(:meth:`lstm_train.nn.LSTM.recording`, never a second copy of the cell maths) become:

- ``gates_<lstm>.<layer>.png``: heatmaps, units x time, of the i, f, g, o gates and the cell state c of each
  layer and direction, the input along the time axis (characters or tokens; for first_last the step
  index, the two informative steps marked);
- ``grad_highway_<lstm>.png`` (first_last): ||dL/dh_t|| of the sequence's loss against t, per layer;
- ``saturation.png``: per unit, the fraction of steps each sigmoid gate spends below 0.1 and above 0.9, one
  panel per layer and direction (as in Karpathy, Johnson & Fei-Fei 2015);
- for text inputs, ``unit_<layer>_<kind>_<n>.html`` and ``.png``: the text coloured by one unit's activation;
  :func:`rank_units` finds candidates (largest variance, or strongest correlation with a text feature).
"""

from __future__ import annotations

import argparse
import html
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lstm_train.errors import UsageError, one_line_errors
from lstm_train.nn import Recording
from lstm_train.registry import implements
from lstm_train.runs.trained import UnknownTokens, add_checkpoint_options, load_trained, told
from lstm_train.tasks import TASKS, Example, Task
from lstm_train.training.probe import (
    GATES,
    HIGH,
    LOW,
    SIGMOID_GATES,
    find_lstms,
    grad_highway_figure,
    grad_norms_per_step,
    record,
)

KINDS = (*GATES, "cell")  # what a unit can be coloured by: a gate's activation or the cell state
SHORT = {"i": "input", "f": "forget", "g": "candidate", "o": "output", "c": "cell"}
FEATURES = ("line_position", "inside_quotes", "inside_parens")  # text features units are ranked against


def load(path: str | Path, device: str = "cpu", imports: Sequence[str] = ()) -> tuple[DictConfig, Task, nn.Module]:
    """The config, the task (from its checkpoint state when it has one; no data needed) and the model."""
    try:
        cfg, task, model = load_trained(path, device, imports=imports, note=told("lstm-visualize"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not find_lstms(model):
        raise UsageError(f"{path} is a model.cell={cfg.model.cell} model: only an LSTM has gates")
    return cfg, task, model


def make_example(task: Task, text: str | None = None, seed: int = 0) -> Example:
    """The input to plot, as the task makes it from ``text`` (or ``seed``); tasks that make none are refused."""
    if not implements(type(task), "example"):
        names = [t.name for t in TASKS.supporting("example")]
        raise UsageError(f"task {task.name} is not supported; use a {', '.join(names[:-1])} or {names[-1]} checkpoint")
    return task.example(text, seed)


def _show(token: str) -> str:
    return {"\n": "\u23ce", " ": "\u2423", "\t": "\u21e5"}.get(token, token)


def gate_recordings(task: Task, model: nn.Module, example: Example, grads: bool = False) -> dict[str, Recording]:
    """Each LSTM's recording of the example's forward (the first call, for LSTMs called several times), of the
    LSTMs that run over the example's steps: one inside over something else (a tagger's character LSTM, over
    each distinct word) has no step per label and is left out. ``grads``: with dL/dh_t of the example's loss
    (its batch must hold the true target)."""
    batch = example.batch.to(next(model.parameters()).device)
    recs = {name: calls[0] for name, calls in record(task, model, batch, grads=grads).items() if calls}
    return {name: rec for name, rec in recs.items() if _sequences_and_steps(rec) == (1, len(example.labels))}


def _sequences_and_steps(rec: Recording) -> tuple[int, int]:
    shape = rec.gates[0].shape  # (B, T, 4, H) batch first, else (T, B, 4, H)
    return (shape[0], shape[1]) if rec.batch_first else (shape[1], shape[0])


def activations(rec: Recording, layer: str, kind: str) -> Tensor:
    """(T, H) activations of one layer and direction of a one-sequence recording: a gate or the cell state."""
    kind = SHORT.get(kind, kind)
    if layer not in rec.names:
        raise UsageError(f"no layer {layer!r}; this LSTM has {', '.join(rec.names)}")
    if kind not in KINDS:
        raise UsageError(f"no gate {kind!r}; choose one of {', '.join(KINDS)} (or {', '.join(SHORT)})")
    k = rec.names.index(layer)
    values = rec.cells[k] if kind == "cell" else rec.gates[k][..., GATES.index(kind), :]
    return (values[0] if rec.batch_first else values[:, 0]).float().cpu()


def parse_unit(spec: str, rec: Recording) -> tuple[str, str, int]:
    """``LAYER:KIND:UNIT`` (``l1:cell:17``, ``l0:f:3``) -> (layer, kind, unit), checked against ``rec``."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise UsageError(f"--unit {spec!r}: expected LAYER:KIND:UNIT, e.g. l1:cell:17")
    layer, kind, unit = parts[0], SHORT.get(parts[1], parts[1]), int(parts[2])
    hidden = activations(rec, layer, kind).shape[1]
    if unit >= hidden:
        raise UsageError(f"--unit {spec!r}: unit {unit} out of range; layers have {hidden} units (0..{hidden - 1})")
    return layer, kind, unit


# ---- ranking units -----------------------------------------------------------------------------------
def text_feature(text: str, name: str) -> Tensor:
    """A per-character feature: characters since the line start, or 1 inside "..." or (...)."""
    if name == "line_position":
        values, pos = [], 0
        for c in text:
            values.append(pos)
            pos = 0 if c == "\n" else pos + 1
        return torch.tensor(values, dtype=torch.float64)
    if name in ("inside_quotes", "inside_parens"):
        values, inside = [], False
        for c in text:
            if name == "inside_quotes" and c == '"':
                inside = not inside
            elif name == "inside_parens" and c in "()":
                inside = c == "("
            values.append(float(inside))
        return torch.tensor(values, dtype=torch.float64)
    raise UsageError(f"no feature {name!r}; choose one of variance, {', '.join(FEATURES)}")


def rank_units(values: Tensor, feature: Tensor | None = None, top: int = 10) -> list[tuple[int, float]]:
    """The ``top`` units of (T, H) ``values``: by variance over time, or by |Pearson correlation| with a (T,)
    feature. Returns (unit, score) pairs, best first; the score of a correlation keeps its sign."""
    v = values.double()
    if feature is None:
        scores = v.var(dim=0, correction=0)
        order = scores.argsort(descending=True)
    else:
        f = feature.double() - feature.double().mean()
        if not f.abs().sum() > 0:
            raise UsageError("the feature is constant on this text: nothing to correlate with")
        centred = v - v.mean(dim=0)
        denominator = centred.norm(dim=0) * f.norm()
        scores = (centred * f[:, None]).sum(0) / denominator.clamp_min(1e-12)
        order = scores.abs().argsort(descending=True)
    return [(int(u), float(scores[u])) for u in order[:top]]


# ---- plots -------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def heatmap_size(steps: int, units: int) -> tuple[float, float]:
    """Figure size in inches (100 dpi) of a gate heatmap: wide enough for a label per step, 5 panels high."""
    width = min(max(3.0 + 0.16 * steps, 8.0), 24.0)
    panel = min(max(0.6 + 0.025 * units, 1.6), 4.0)
    return width, 5 * panel + 0.6


def heatmap_figure(rec: Recording, layer: str, example: Example, title: str):
    """The i, f, g, o gates and the cell state of one layer and direction: units (rows) x time (columns)."""
    panels = [(kind, activations(rec, layer, kind)) for kind in KINDS]
    T, H = panels[0][1].shape
    figure = _figure(*heatmap_size(T, H))
    axes = figure.subplots(len(panels), 1, sharex=True)
    every = max(1, math.ceil(T / 120))  # at most ~120 tick labels
    ticks = sorted(set(range(0, T, every)) | set(example.marks))
    labels = [_show(label) for label in example.labels]
    for ax, (kind, values) in zip(axes, panels, strict=True):
        if kind in ("candidate", "cell"):  # signed: a diverging map centred on 0
            bound = max(float(values.abs().max()), 1e-6) if kind == "cell" else 1.0
            image = ax.imshow(
                values.t().numpy(), aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest"
            )
        else:
            image = ax.imshow(
                values.t().numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
            )
        figure.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
        note = rec.constants.get(kind)  # a gate the LSTM variant does not compute (lstm_train/nn/variants.py)
        ax.set_ylabel(f"{kind}\n" + (f"({note})" if note else "unit"), fontsize=9)
        for t in example.marks:
            ax.axvline(t, color="red", linewidth=1.0, linestyle="--")
    axes[-1].set_xticks(
        ticks,
        [labels[t] for t in ticks],
        fontsize=8 if T <= 60 else 6,
        rotation=90 if example.text is None and len(ticks) > 40 else 0,
    )
    for t, label in zip(ticks, axes[-1].get_xticklabels(), strict=True):
        if t in example.marks:
            label.set_color("red")
    axes[-1].set_xlabel("time step" + (" (red: the informative first and last steps)" if example.marks else ""))
    axes[0].set_title(title, fontsize=10)
    return figure


def saturation_figure(recs: dict[str, Recording], title: str):
    """Per unit: fraction of steps below 0.1 (x) against above 0.9 (y), for each sigmoid gate; one panel per
    layer and direction of every LSTM."""
    layers = [(lstm, layer) for lstm, rec in recs.items() for layer in rec.names]
    cols = min(len(layers), 4)
    rows = math.ceil(len(layers) / cols)
    figure = _figure(3.6 * cols + 0.4, 3.4 * rows + 0.5)
    axes = figure.subplots(rows, cols, squeeze=False).flatten()
    colours = {"input": "tab:blue", "forget": "tab:orange", "output": "tab:green"}
    for ax, (lstm, layer) in zip(axes, layers, strict=False):
        for j in SIGMOID_GATES:
            values = activations(recs[lstm], layer, GATES[j])
            low, high = (values < LOW).float().mean(0), (values > HIGH).float().mean(0)
            ax.scatter(low.numpy(), high.numpy(), s=12, alpha=0.6, color=colours[GATES[j]], label=GATES[j])
        ax.plot([0, 1], [1, 0], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        ax.set_title(f"{lstm}.{layer}", fontsize=9)
        ax.set_xlabel(f"fraction of steps < {LOW}", fontsize=8)
        ax.set_ylabel(f"fraction of steps > {HIGH}", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=10)
    return figure


def _colours(values: Tensor) -> list[tuple[float, float, float]]:
    """Blue (the unit's lowest value on this text) to red (its highest): a unit that varies over a small range,
    as many do, still shows where it changes. The titles give the range."""
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"]
    lo, hi = float(values.min()), float(values.max())
    scaled = (values.double() - lo) / max(hi - lo, 1e-12)
    return [cmap(x)[:3] for x in scaled.tolist()]


def unit_title(where: str, layer: str, kind: str, unit: int, values: Tensor) -> str:
    lo, hi = float(values.min()), float(values.max())
    return f"{where}: {layer} {kind} unit {unit} (blue: {lo:.2f} ... red: {hi:.2f})"


def coloured_html(text: str, values: Tensor, title: str) -> str:
    """The text as HTML, each character's background the unit's activation (see :func:`_colours`); the
    value shows on hovering."""
    spans = []
    for c, v, colour in zip(text, values.tolist(), _colours(values), strict=True):
        r, g, b = (round(255 * x) for x in colour)
        shown = "\u23ce<br>" if c == "\n" else html.escape(c).replace(" ", "&nbsp;")
        spans.append(f'<span style="background:rgb({r},{g},{b})" title="{v:.3f}">{shown}</span>')
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>\n"
        f"<body><h3>{html.escape(title)}</h3>\n<div style='font-family:monospace;font-size:14px;"
        f"line-height:1.6'>{''.join(spans)}</div></body></html>\n"
    )


def coloured_text_figure(text: str, values: Tensor, title: str, width: int = 80, max_lines: int = 40):
    """The text on a character grid (lines wrapped at ``width``), each cell coloured by the unit's activation."""
    from matplotlib.patches import Rectangle

    lines: list[list[tuple[str, tuple]]] = [[]]
    for c, colour in zip(text, _colours(values), strict=True):
        lines[-1].append((_show(c) if c == "\n" else c, colour))
        if c == "\n" or len(lines[-1]) == width:
            lines.append([])
    lines = [line for line in lines if line][:max_lines]
    cols = max(len(line) for line in lines)
    figure = _figure(0.12 * cols + 0.5, 0.24 * len(lines) + 0.7)
    ax = figure.add_subplot()
    for row, line in enumerate(lines):
        for col, (c, colour) in enumerate(line):
            ax.add_patch(Rectangle((col, row), 1, 1, color=colour, linewidth=0))
            ax.text(col + 0.5, row + 0.55, c, ha="center", va="center", family="monospace", fontsize=8)
    ax.set_xlim(0, cols)
    ax.set_ylim(len(lines), 0)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return figure


# ---- the command -------------------------------------------------------------------------------------
def write_plots(
    checkpoint: str | Path,
    out_dir: str | Path,
    text: str | None = None,
    seed: int = 0,
    unit: str | None = None,
    rank: str = "variance",
    top: int = 10,
    device: str = "cpu",
    imports: Sequence[str] = (),
) -> list[Path]:
    """Everything the script writes; returns the files written (and prints the ranking for text inputs)."""
    cfg, task, model = load(checkpoint, device, imports)
    example = make_example(task, text, seed)
    if text is not None:
        unknown = UnknownTokens(cfg, task)
        unknown.add(text)
        warning = unknown.warning()
        if warning:
            print(f"lstm-visualize: warning: {warning}", file=sys.stderr)
    recs = gate_recordings(task, model, example, grads=example.has_target)
    chosen = None
    if example.text is not None:  # the unit to colour the text by, checked before anything is written
        first = recs[next(iter(recs))]  # the one LSTM of a char or text model
        if unit is None:  # the best-ranked cell unit of the top layer
            layer = first.names[-1]
            feature = None if rank == "variance" else text_feature(example.text, rank)
            ranking = rank_units(activations(first, layer, "cell"), feature, top)
            print(f"units of {layer} ranked by {rank} of the cell state (unit: score):")
            print("  " + ", ".join(f"{u}: {s:.3f}" for u, s in ranking))
            chosen = (layer, "cell", ranking[0][0])
        else:
            chosen = parse_unit(unit, first)
    elif unit is not None:
        raise UsageError("--unit colours a text; this input has none")

    out_dir = made_out_dir(out_dir)
    where = f"{cfg.model.name} on {cfg.task.name}"
    written = []
    for lstm, rec in recs.items():
        for layer in rec.names:
            path = out_dir / f"gates_{lstm}.{layer}.png"
            heatmap_figure(rec, layer, example, f"{where}: {lstm}.{layer}").savefig(path)
            written.append(path)
    path = out_dir / "saturation.png"
    saturation_figure(recs, f"{where}: gate saturation per unit over {len(example.labels)} steps").savefig(path)
    written.append(path)
    if example.has_target:  # dL/dh_t of the example's loss means something
        for lstm, rec in recs.items():
            norms = dict(zip(rec.names, grad_norms_per_step(rec), strict=True))
            path = out_dir / f"grad_highway_{lstm}.png"
            grad_highway_figure(norms, f"{where}: ||dL/dh_t|| of this sequence's loss, {lstm}").savefig(path)
            written.append(path)
    if chosen is not None:
        layer, kind, n = chosen
        values = activations(first, layer, kind)[:, n]
        title = unit_title(where, layer, kind, n, values)
        stem = out_dir / f"unit_{layer}_{kind}_{n}"
        stem.with_suffix(".html").write_text(coloured_html(example.text, values, title), encoding="utf-8")
        coloured_text_figure(example.text, values, title).savefig(stem.with_suffix(".png"))
        written += [stem.with_suffix(".html"), stem.with_suffix(".png")]
    return written


def made_out_dir(out_dir: str | Path) -> Path:
    """The directory to write into, made if missing; a one-line UsageError if it cannot be."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a directory (made if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot make it ({e.strerror}); give a writable directory") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir} is not writable; give a writable directory")
    return out_dir


def default_out_dir(checkpoint: str | Path) -> Path:
    """gates/ in the run dir when the checkpoint is in one (RUN/checkpoints/best.pt, RUN/checkpoints or RUN ->
    RUN/gates); else <name>_gates/ beside the file, or in the working directory when that cannot be written."""
    path = Path(checkpoint).expanduser().resolve()
    if path.is_dir():
        return (path.parent if path.name == "checkpoints" else path) / "gates"
    if path.parent.name == "checkpoints":
        return path.parent.parent / "gates"
    return (path.parent if os.access(path.parent, os.W_OK) else Path.cwd()) / f"{path.stem}_gates"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-visualize", description="Plot an LSTM checkpoint's gates on one input.")
    p.add_argument("checkpoint", help="a run dir (its checkpoints/best.pt) or a checkpoint file written by lstm-train")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", help="the input text (char and text-classification models; a tagger's sentence)")
    source.add_argument("--text-file", help="a UTF-8 file holding the input text")
    p.add_argument("--seed", type=int, default=0, help="first_last: the seed of the generated sequence (default 0)")
    p.add_argument("--out", help="output directory (default: gates/ in the checkpoint's run dir; for a checkpoint "
                   "outside one, <name>_gates/ beside it)")
    p.add_argument(
        "--unit",
        help="colour the text by LAYER:KIND:UNIT, e.g. l1:cell:17 (KIND: "
        f"{', '.join(KINDS)} or {', '.join(SHORT)}); default: the top-ranked cell unit of the top layer",
    )
    p.add_argument(
        "--rank",
        default="variance",
        choices=["variance", *FEATURES],
        help="how to rank units: variance over the text, or |correlation| with a text feature",
    )
    p.add_argument("--top", type=int, default=10, help="how many ranked units to print (default 10)")
    add_checkpoint_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with one_line_errors("lstm-visualize", UnicodeDecodeError):
        text = args.text
        if args.text_file:
            path = Path(args.text_file).expanduser()
            if not path.is_file():
                raise UsageError(f"no file at {path}")
            text = path.read_text(encoding="utf-8")
        for path in write_plots(
            args.checkpoint, args.out or default_out_dir(args.checkpoint), text, args.seed, args.unit, args.rank,
            args.top, args.device, args.imports,
        ):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
