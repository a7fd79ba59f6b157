"""The multi-layer, optionally bidirectional LSTM: a drop-in for torch.nn.LSTM.

Cell maths lives in ``cell.py``; the time loop of one layer and direction in ``reference.py`` (readable)
and ``fast.py`` (fast). This module holds the parameters and composes layers and directions:
dropout between layers only, both directions' outputs concatenated, variable lengths, gates on demand.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .cell import init_lstm_weights_
from .compiled import auto_layer
from .fast import prepare_weights
from .record import Recording
from .reference import reference_layer

Impl = Literal["fast", "reference"]
IMPLS = {"fast": auto_layer, "reference": reference_layer}  # fast: compiled.py's kernel, else fast.py's loop
# Per impl, what its layer can take precomputed (``prepared=``): the LSTM caches it for calls without autograd.
PREPARE = {"fast": prepare_weights}


class LSTM(nn.Module):
    """A from-scratch LSTM with the constructor, parameters, inputs and outputs of torch.nn.LSTM.

    ``ours.load_state_dict(torch_lstm.state_dict())`` and the reverse work as they are.

    Beyond torch.nn.LSTM:
    - ``forget_bias`` (default 1.0): the effective forget-gate bias at initialisation; weights are
      Xavier-uniform (see :func:`lstm_train.nn.cell.init_lstm_weights_`).
    - ``impl``: ``"fast"`` (default; hand-written backward) or ``"reference"`` (the equations step by
      step under autograd). Both give the same numbers.
    - ``forward(..., lengths=...)``: right-padded batches, lengths in any order; outputs past a length
      are zero, ``h_n``/``c_n`` are each sequence's state at its true end, and the reverse direction
      starts at each sequence's last valid step: exactly what torch.nn.LSTM does on a PackedSequence.
    - ``forward(..., return_gates=True)`` also returns the gate activations (detached), one tensor per
      layer and direction in the order of ``h_n`` (layer-major, forward before reverse), each
      (T, B, 4, H) with gates in i, f, g, o order ((B, T, 4, H) if ``batch_first``), zero past lengths.
    - ``with lstm.recording(grads=True) as calls:`` records every forward inside it (gates, cell states,
      and after a backward the gradient dL/dh_t of every step) without changing what forward returns,
      so the LSTM can be probed inside any model; see :class:`lstm_train.nn.record.Recording`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        forget_bias: float = 1.0,
        impl: Impl = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {sorted(IMPLS)}, got {impl!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between layers only; with num_layers=1 it does nothing", stacklevel=2)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.forget_bias = forget_bias
        self.impl = impl
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        self._weight_names: list[tuple[str, str, str | None, str | None]] = []
        self._recordings: list[Recording] | None = None  # set while recording()
        self._record_grads = False
        # layer-direction index -> (the weights' identity and versions, their prepared form): see _prepared
        self._prepared_cache: dict[int, tuple] = {}
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {
                    "weight_ih": (4 * hidden_size, layer_input),
                    "weight_hh": (4 * hidden_size, hidden_size),
                    **({"bias_ih": (4 * hidden_size,), "bias_hh": (4 * hidden_size,)} if bias else {}),
                }
                for kind, shape in shapes.items():
                    self.register_parameter(kind + suffix, nn.Parameter(torch.empty(shape, **factory)))
                names = [kind + suffix for kind in ("weight_ih", "weight_hh")]
                names += [kind + suffix for kind in ("bias_ih", "bias_hh")] if bias else [None, None]
                self._weight_names.append(tuple(names))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer_direction in range(len(self._weight_names)):
            init_lstm_weights_(*self._weights(layer_direction), self.forget_bias)

    def flatten_parameters(self) -> None:
        """No-op, so code written for torch.nn.LSTM (which calls this for cuDNN) runs unchanged."""

    @contextmanager
    def recording(self, grads: bool = False) -> Iterator[list[Recording]]:
        """Record every forward call made inside the block; ``grads``: also dL/dh_t of every step."""
        if self._recordings is not None:
            raise RuntimeError("this LSTM is already being recorded")
        self._recordings, self._record_grads = [], grads
        try:
            yield self._recordings
        finally:
            self._recordings, self._record_grads = None, False

    def _prepared(self, index: int, weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None]):
        """The impl's prepared weights of one layer and direction, made again only when a weight has changed.

        A weight has changed if its tensor (address) or version counter (bumped by every in-place update:
        optimiser steps, load_state_dict, init) has. The cache keeps the old tensors, so their memory cannot
        be reused by new weights at the same address. Used only with grad mode off (the prepared tensors are
        not differentiable); a forward with autograd drops the cache.
        """
        key = tuple((w.data_ptr(), w._version) for w in weights if w is not None), weights[0].device
        entry = self._prepared_cache.get(index)
        if entry is None or entry[0] != key:
            kept = [w.detach() for w in weights if w is not None]
            entry = self._prepared_cache[index] = (key, PREPARE[self.impl](weights), kept)
        return entry[1]

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # a copy of __dict__
        state["_prepared_cache"] = {}  # a copy's weights are new tensors whose versions restart: never reuse
        return state

    def _weights(self, index: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        return tuple(None if name is None else getattr(self, name) for name in self._weight_names[index])

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | Sequence[int] | None = None,
        return_gates: bool = False,
    ):
        """Returns ``(output, (h_n, c_n))``, plus the list of gate tensors if ``return_gates``."""
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("pass lengths or a PackedSequence, not both")
            x, lengths = pad_packed_sequence(packed)  # back to the caller's batch order
            unbatched = False
        else:
            x = input
            if x.dim() not in (2, 3):
                raise ValueError(f"LSTM: expected 2-D (unbatched) or 3-D input, got {x.dim()}-D")
            unbatched = x.dim() == 2
            x = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"LSTM: input has {x.shape[-1]} features, expected input_size={self.input_size}")
        T, B = x.shape[0], x.shape[1]
        D, L, H = 2 if self.bidirectional else 1, self.num_layers, self.hidden_size

        if hx is None:
            h0 = c0 = x.new_zeros(L * D, B, H)
        else:
            h0, c0 = (s.unsqueeze(1) for s in hx) if unbatched else hx
            for name, s in (("h0", h0), ("c0", c0)):
                if tuple(s.shape) != (L * D, B, H):
                    raise ValueError(f"LSTM: {name} has shape {tuple(s.shape)}, expected {(L * D, B, H)}")

        order = lengths_in = None
        if lengths is not None:
            lengths = lengths_in = _check_lengths(lengths, T, B)  # lengths_in: the caller's order, for a recording
            if int(lengths.min()) == T:
                lengths = None  # nothing is padded: the plain path is exact and faster
            else:  # sort longest first once, for every layer and direction; undone at the end
                order = torch.argsort(lengths, descending=True, stable=True)
                lengths = lengths[order]
                dev_order = order.to(x.device)
                x = x[: int(lengths[0])].index_select(1, dev_order)
                h0, c0 = h0.index_select(1, dev_order), c0.index_select(1, dev_order)

        recordings = self._recordings
        acts = return_gates or recordings is not None
        sinks = None
        if recordings is not None and self._record_grads and torch.is_grad_enabled():
            sinks = [x.new_zeros(x.shape[0], B, H) for _ in range(L * D)]  # filled by the backward
        run = IMPLS[self.impl]
        cached = self.impl in PREPARE and not torch.is_grad_enabled()
        if not cached and self._prepared_cache:
            self._prepared_cache.clear()  # training: the weights are about to change anyway; free the memory
        out, h_n, c_n, gates, cells = x, [], [], [], []
        for layer in range(L):
            if layer > 0 and self.dropout > 0:
                out = nn.functional.dropout(out, self.dropout, self.training)
            outs = []
            for direction in range(D):
                k = layer * D + direction
                sink = None if sinks is None else sinks[k]
                weights = self._weights(k)
                extra = {"prepared": self._prepared(k, weights)} if cached else {}
                o, h, c, g, cs = run(out, h0[k], c0[k], weights, lengths, direction == 1, acts, sink, **extra)
                outs.append(o)
                h_n.append(h)
                c_n.append(c)
                gates.append(g)
                cells.append(cs)
            out = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)

        inverse = None if order is None else torch.argsort(order).to(x.device)
        transpose = self.batch_first and packed is None and not unbatched

        def restore(t: Tensor) -> Tensor:
            """A per-step (T', B, ...) tensor of the sorted batch -> the caller's order, length and layout."""
            if inverse is not None:
                t = t.index_select(1, inverse)
            if t.shape[0] < T:  # the longest sequence is shorter than the padding: pad back with zeros
                t = torch.cat([t, t.new_zeros(T - t.shape[0], *t.shape[1:])])
            if unbatched:
                return t.squeeze(1)
            return t.transpose(0, 1) if transpose else t

        if inverse is not None:
            h_n, c_n = (t.index_select(1, inverse) for t in (h_n, c_n))
        out = restore(out)
        if packed is not None:
            out = _repack(out, packed)
        elif transpose:
            out = out.contiguous()  # contiguous as torch.nn.LSTM's, so .view() works on it
        if unbatched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        if acts:
            gates = [restore(g) for g in gates]
        if recordings is not None:
            names = [f"l{k // D}" + ("_reverse" if k % D else "") for k in range(L * D)]
            recordings.append(Recording(names, gates, [restore(c) for c in cells], lengths_in, transpose, sinks,
                                        restore))
        if return_gates:
            return out, (h_n, c_n), gates
        return out, (h_n, c_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + f", forget_bias={self.forget_bias}, impl={self.impl!r}"


def _check_lengths(lengths: Tensor | Sequence[int], T: int, B: int) -> Tensor:
    lengths = torch.as_tensor(lengths).to("cpu", torch.int64)  # like pack_padded_sequence: lengths live on the CPU
    if lengths.dim() != 1 or lengths.numel() != B:
        raise ValueError(f"lengths must hold one length per sequence ({B}), got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the padded length), got {lengths.tolist()}")
    return lengths


def _repack(out: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a padded (T, B, F) output in the caller's batch order exactly as ``like`` is packed."""
    if like.sorted_indices is not None:
        out = out.index_select(1, like.sorted_indices.to(out.device))
    steps = [out[t, :b] for t, b in enumerate(like.batch_sizes.tolist())]
    return PackedSequence(torch.cat(steps), like.batch_sizes, like.sorted_indices, like.unsorted_indices)
