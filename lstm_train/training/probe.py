"""What the gates do during training: a probe run every ``trainer.probe_every_n_steps`` on a fixed batch.

The probe runs ``task.forward`` and ``task.loss`` on a deep copy of the model in eval mode, with every
LSTM inside it recorded (:meth:`lstm_train.nn.LSTM.recording`), and one ``torch.autograd.grad`` to get
dL/dh_t at every step. The copy, a forked RNG and the gradients taken with ``autograd.grad`` (never
``.backward()``) leave the trained model, its gradients and every random draw of training untouched, so a
run with the probe ends with the same numbers as one without. It works for any model: it finds every
LSTM submodule by type; a torch.nn.LSTM (``model.backend=torch``) is swapped in the copy for our LSTM with
the same weights (same parameter names, same maths), whose gates can be read.

TensorBoard tags (``<lstm>`` is the module path, e.g. ``encoder.lstm``; ``<layer>`` is ``l0``,
``l0_reverse``, ``l1``, ... as in the parameter names):
- ``gates/<lstm>.<layer>/{input,forget,candidate,output}``: histograms over real (unpadded) steps;
- ``cell_state/<lstm>.<layer>``: histogram of c_t;
- ``saturation/<lstm>.<layer>/{input,forget,output}_{low,high}``: fraction of activations < 0.1 / > 0.9;
- ``grad_highway/<lstm>.<layer>/log10_first_over_last``: log10 of ||dL/dh|| at the direction's first
  step over that at its last step (0: the gradient reaches the start undiminished);
- ``grad_highway/<lstm>``: image, ||dL/dh_t|| against t (log scale), one line per layer and direction.
"""

from __future__ import annotations

import copy
import math
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lstm_train.nn import LSTM, Recording, TorchLSTM
from lstm_train.tasks import Batch, Task
from lstm_train.training.tracking import Tracker

GATES = ("input", "forget", "candidate", "output")  # the i, f, g, o of the cell equations
SIGMOID_GATES = (0, 1, 3)  # g is a tanh in [-1, 1]: near 0 or 1 means nothing special for it
LOW, HIGH = 0.1, 0.9  # saturation thresholds


def find_lstms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every LSTM submodule (ours or torch's), by module path; GRU and RNN baselines have no gates."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LSTM | TorchLSTM)]


def recordable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every torch.nn.LSTM is our LSTM with the same weights."""
    model = copy.deepcopy(model)
    for name, module in find_lstms(model):
        if isinstance(module, TorchLSTM):
            ours = LSTM(
                module.input_size,
                module.hidden_size,
                module.num_layers,
                module.bias,
                module.batch_first,
                module.dropout,
                module.bidirectional,
                forget_bias=module.forget_bias,
            ).to(next(module.parameters()))
            ours.load_state_dict(module.state_dict())
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, ours)
    return model


def record(task: Task, model: nn.Module, batch: Batch, grads: bool = True) -> dict[str, list[Recording]]:
    """Run the task's forward (and with ``grads`` its loss's gradient) on a copy of the model in eval mode;
    every LSTM's recordings by module path (one Recording per forward call of that LSTM)."""
    model = recordable_copy(model).eval()
    lstms = find_lstms(model)
    if not lstms:
        raise ValueError(f"{type(model).__name__} has no LSTM to record (a GRU or RNN has no gates)")
    with torch.random.fork_rng(devices=[]), ExitStack() as stack:
        calls = {name: stack.enter_context(m.recording(grads=grads)) for name, m in lstms}
        with torch.set_grad_enabled(grads):
            output = task.forward(model, batch)
            if grads:
                params = [p for p in model.parameters() if p.requires_grad]
                # fills the recordings' dL/dh_t; .backward() would write the parameters' .grad
                torch.autograd.grad(task.loss(output, batch), params, allow_unused=True)
    return calls


def valid_mask(rec: Recording) -> Tensor | None:
    """(T, B) or (B, T), as the recording's tensors: True on real steps; None if nothing is padded."""
    if rec.lengths is None:
        return None
    T = rec.gates[0].shape[1 if rec.batch_first else 0]
    mask = torch.arange(T).unsqueeze(1) < rec.lengths.unsqueeze(0)  # (T, B)
    mask = mask.t() if rec.batch_first else mask
    return mask.to(rec.gates[0].device)


def real_steps(values: Tensor, mask: Tensor | None) -> Tensor:
    """A (T, B, ...) or (B, T, ...) tensor's entries at real steps, flattened."""
    return (values if mask is None else values[mask]).flatten()


def grad_norms_per_step(rec: Recording) -> list[Tensor]:
    """||dL/dh_t|| over batch and units, one (T,) tensor per layer and direction."""
    dims = (0, 2) if rec.batch_first else (1, 2)
    return [torch.linalg.vector_norm(g, dim=dims) for g in rec.hidden_grads]


@dataclass
class Summary:
    """What the trainer logs for one probe: tag -> values."""

    histograms: dict[str, Tensor]
    scalars: dict[str, float]
    figures: dict[str, Any]

    def write(self, tracker: Tracker, step: int) -> None:
        """Into TensorBoard, at ``step``."""
        tracker.histograms(self.histograms, step)
        tracker.scalars(self.scalars, step)
        tracker.figures(self.figures, step)


def summarize(calls: dict[str, list[Recording]]) -> Summary:
    """Histograms, saturation and gradient-highway scalars and plots of the recordings (see the module doc)."""
    histograms: dict[str, Tensor] = {}
    scalars: dict[str, float] = {}
    figures: dict[str, Any] = {}
    for lstm, recs in calls.items():
        # Only the calls the loss went through: a task's forward may also decode without autograd (seq2seq
        # in eval mode), which would count the encoder twice and has no dL/dh_t.
        recs = [r for r in recs if r.hidden_grads is not None] or recs
        if not recs:
            continue
        highway: dict[str, Tensor] = {}
        norms_per_call = [grad_norms_per_step(r) for r in recs] if recs[0].hidden_grads is not None else None
        for k, layer in enumerate(recs[0].names):
            prefix = f"{lstm}.{layer}"
            masks = [valid_mask(r) for r in recs]
            for j, gate in enumerate(GATES):
                values = torch.cat([real_steps(r.gates[k][..., j, :], m) for r, m in zip(recs, masks, strict=True)])
                histograms[f"gates/{prefix}/{gate}"] = values
                if j in SIGMOID_GATES:
                    scalars[f"saturation/{prefix}/{gate}_low"] = (values < LOW).float().mean().item()
                    scalars[f"saturation/{prefix}/{gate}_high"] = (values > HIGH).float().mean().item()
            histograms[f"cell_state/{prefix}"] = torch.cat(
                [real_steps(r.cells[k], m) for r, m in zip(recs, masks, strict=True)]
            )
            if norms_per_call is not None:  # calls one after another (a decoder run step by step): one series
                norms = torch.cat([n[k] for n in norms_per_call]).cpu()
                highway[layer] = norms
                first, last = (norms[-1], norms[0]) if layer.endswith("_reverse") else (norms[0], norms[-1])
                if first > 0 and last > 0:
                    scalars[f"grad_highway/{prefix}/log10_first_over_last"] = math.log10(first / last)
        if highway:
            figures[f"grad_highway/{lstm}"] = grad_highway_figure(highway, f"||dL/dh_t|| on the probe batch: {lstm}")
    return Summary(histograms, scalars, figures)


def grad_highway_figure(norms: dict[str, Tensor], title: str):
    """||dL/dh_t|| against t, log y, one line per layer and direction: a matplotlib Figure (no pyplot)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    for name, values in norms.items():
        values = values.double()
        ax.plot(
            torch.arange(len(values)).numpy(),
            values.masked_fill(values <= 0, math.nan).numpy(),
            label=name,
            marker="." if len(values) <= 60 else None,
        )
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t||")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="layer", fontsize=8)
    return figure


class Probe:
    """The trainer's probe: a fixed batch (the val split's first ``size`` sequences) and what to log."""

    def __init__(self, task: Task, model: nn.Module, size: int, device: torch.device) -> None:
        if not find_lstms(model):
            kind = ", ".join(sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)}))
            raise ValueError(f"the probe reads LSTM gates; this model has none ({kind or type(model).__name__}): "
                             "set it to null")
        self.task = task
        self.batch = task.probe_batch(size).to(device)

    def __call__(self, model: nn.Module) -> Summary:
        return summarize(record(self.task, model, self.batch))
