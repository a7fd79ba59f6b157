"""The multi-layer, optionally bidirectional LSTM: a drop-in for torch.nn.LSTM.

Cell maths lives in ``cell.py``; the time loop of one layer and direction in ``reference.py`` (readable)
and ``fast.py`` (fast). This module holds the parameters and composes layers and directions:
dropout between layers only, both directions' outputs concatenated, variable lengths, gates on demand.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .cell import Chrono, init_lstm_weights_
from .checks import check_bool, check_dropout, check_int
from .compiled import auto_layer
from .fast import fast_cell_layer, fast_layer_applies
from .record import Recording
from .reference import LayerWeights, cell_layer, layer_params, reference_layer
from .variants import Cell, Noise, Params, Variant, drop_weight

Backend = Literal["fast", "reference"]
# The layer function of each backend (the table: lstm_train/nn/backend.py); fast: compiled.py's kernel, else
# fast.py's loop
LAYERS = {"fast": auto_layer, "reference": reference_layer}
NO_NOISE = Noise()


class LSTM(nn.Module):
    """A from-scratch LSTM with the constructor, parameters, attributes, inputs, outputs and errors of
    torch.nn.LSTM (``proj_size`` included).

    ``ours.load_state_dict(torch_lstm.state_dict())`` and the reverse work as they are. Weights are read
    from the module at every forward (``getattr``), never copied or cached, so in-place edits through
    ``.data``, ``torch.nn.utils.weight_norm`` and parametrizations are always seen.

    Beyond torch.nn.LSTM:

    - ``forget_bias`` (default 1.0): the effective forget-gate bias at initialisation, or :class:`Chrono`
      (chrono initialisation of the forget and input biases, for dependencies up to a length); weights are
      Xavier-uniform (see :func:`lstm_train.nn.cell.init_lstm_weights_`).
    - ``backend``: ``"fast"`` (default; hand-written backward) or ``"reference"`` (the equations step by
      step under autograd), the names of ``model.backend`` (lstm_train/nn/backend.py). Both give the same
      numbers. Where the hand-written backward cannot serve (torch.func transforms, forward-mode AD,
      torch.export/compile tracing) the fast backend runs the reference's maths; a double backward
      (``create_graph=True``) differentiates the reference's maths.
    - ``forward(..., lengths=...)``: right-padded batches, lengths in any order; outputs past a length
      are zero, ``h_n``/``c_n`` are each sequence's state at its true end, and the reverse direction
      starts at each sequence's last valid step: exactly what torch.nn.LSTM does on a PackedSequence.
    - ``forward(..., return_gates=True)`` also returns the gate activations (detached), one tensor per
      layer and direction in the order of ``h_n`` (layer-major, forward before reverse), each
      (T, B, 4, H) with gates in i, f, g, o order ((B, T, 4, H) if ``batch_first``), zero past lengths.
    - ``with lstm.recording(grads=True) as calls:`` records every forward inside it (gates, cell states,
      and after a backward the gradient dL/dh_t of every step) without changing what forward returns,
      so the LSTM can be probed inside any model; see :class:`lstm_train.nn.record.Recording`.
    - ``variant`` (Greff et al.'s names, lstm_train/nn/variants.py) and ``layer_norm``: another cell, with
      torch's weights plus its own (``weight_ci_l0``, ...); ``cell``: your own :class:`~lstm_train.nn.Cell`.
      ``zoneout_c``, ``zoneout_h``, ``recurrent_dropout`` and ``weight_drop``: recurrent regularisers, active in
      training (zoneout at test: its expectation). ``backend="fast"`` runs the elementwise variants (all but FGR,
      without layer norm), zoneout and recurrent dropout on the compiled kernel; other cells run on the
      pure-PyTorch loop through autograd (its input projection hoisted out of the loop), with a log line saying
      so. Weight drop masks W_hh before the layer runs, so every path serves it.
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
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        forget_bias: float | Chrono = 1.0,
        backend: Backend = "fast",
        variant: str = "lstm",
        layer_norm: bool = False,
        zoneout_c: float = 0.0,
        zoneout_h: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        cell: Cell | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_int(name, value)
        check_int("proj_size", proj_size, minimum=0)
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size ({hidden_size}), got {proj_size}")
        check_bool("bias", bias)
        check_bool("batch_first", batch_first)
        if not isinstance(bidirectional, int):  # torch takes any truthy value; a string is surely a mistake
            raise TypeError(f"bidirectional should be of type bool, got: {type(bidirectional).__name__}")
        check_dropout(dropout)
        if backend not in LAYERS:
            raise ValueError(f"backend must be one of {sorted(LAYERS)}, got {backend!r} (torch.nn.LSTM behind this "
                             "interface: lstm_train.nn.build_lstm('torch', ...))")
        check_bool("layer_norm", layer_norm)
        if cell is not None and (variant != "lstm" or layer_norm):
            raise ValueError("pass a cell or a variant (and layer_norm), not both: a Variant is a cell")
        if cell is None and (variant != "lstm" or layer_norm):
            cell = Variant(variant, layer_norm)
        if cell is not None and not isinstance(cell, Cell):
            raise TypeError(f"cell should be a lstm_train.nn.Cell, got: {type(cell).__name__}")
        Noise(zoneout_c, zoneout_h, recurrent_dropout)  # checks the rates
        check_dropout(weight_drop)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between layers only; with num_layers=1 it does nothing", stacklevel=2)
        self.mode = "LSTM"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.forget_bias = forget_bias
        self.backend = backend
        self.cell = cell  # None: the plain cell, on every path
        self.zoneout_c, self.zoneout_h, self.recurrent_dropout = zoneout_c, zoneout_h, recurrent_dropout
        self.weight_drop = float(weight_drop)
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        out_size = proj_size or hidden_size  # the size of h
        # torch.nn.LSTM's names: all of them in order, and per layer and direction
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        # per layer and direction: the names of (w_ih, w_hh, b_ih, b_hh, w_hr), None for those it has not
        self._weight_names: list[tuple[str | None, ...]] = []
        self._cell_names: list[dict[str, str]] = []  # per layer and direction: the cell's own parameters by kind
        self._recordings: list[Recording] | None = None  # set while recording()
        self._record_grads = False
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else out_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {
                    "weight_ih": (4 * hidden_size, layer_input),
                    "weight_hh": (4 * hidden_size, out_size),
                    "bias_ih": (4 * hidden_size,) if bias else None,
                    "bias_hh": (4 * hidden_size,) if bias else None,
                    "weight_hr": (proj_size, hidden_size) if proj_size else None,
                }
                names = tuple(None if shape is None else kind + suffix for kind, shape in shapes.items())
                for name, shape in zip(names, shapes.values(), strict=True):
                    if name is not None:
                        self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._weight_names.append(names)
                own = {} if cell is None else cell.parameter_shapes(hidden_size, out_size)
                self._cell_names.append({kind: kind + suffix for kind in own})
                for kind, shape in own.items():
                    self.register_parameter(kind + suffix, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append([name for name in names if name is not None])
                self._flat_weights_names.extend(self._all_weights[-1])
        self.reset_parameters()
        if cell is not None:  # a state_dict says which cell it is for (see _check_cell)
            self._register_state_dict_hook(_tag_cell)
            self.register_load_state_dict_pre_hook(_check_cell)

    def reset_parameters(self) -> None:
        for layer_direction in range(len(self._weight_names)):
            w_ih, w_hh, b_ih, b_hh, w_hr = self._weights(layer_direction)
            init_lstm_weights_(w_ih, w_hh, b_ih, b_hh, self.forget_bias, w_hr)
            if self.cell is not None:
                with torch.no_grad():
                    self.cell.reset_parameters(layer_params(self._weights(layer_direction), self._own(layer_direction)))

    def _own(self, index: int) -> Params:
        """One layer and direction's parameters of its cell's own, by kind (weight_ci, ...)."""
        return {kind: getattr(self, name) for kind, name in self._cell_names[index].items()}

    def flatten_parameters(self) -> None:
        """No-op, so code written for torch.nn.LSTM (which calls this for cuDNN) runs unchanged."""

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The weights in torch.nn.LSTM's order, as they are now (read afresh on every access)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per layer and direction, its weights in torch.nn.LSTM's order (w_ih, w_hh[, b_ih, b_hh][, w_hr])."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

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

    def _weights(self, index: int) -> LayerWeights:
        """One layer and direction's weights, through getattr: a parametrized or weight-normed weight is
        computed now, a weight replaced through ``.data`` or ``setattr`` is the new one."""
        registered = self._parameters  # what getattr returns for a plain parameter, without its slow path
        return tuple(
            registered[name] if name in registered else None if name is None else getattr(self, name)
            for name in self._weight_names[index]
        )

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | Sequence[int] | None = None,
        return_gates: bool = False,
    ):
        """Returns ``(output, (h_n, c_n))``, plus the list of gate tensors if ``return_gates``."""
        weights = [self._weights(k) for k in range(len(self._weight_names))]
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("pass lengths or a PackedSequence, not both")
            x, lengths = pad_packed_sequence(packed)  # back to the caller's batch order
            unbatched = False
        else:
            x = input
            if x.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D (unbatched) or 3D, got {x.dim()}D instead")
            unbatched = x.dim() == 2
            x = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        lowered = _check_input(x, weights[0][0], self.input_size)
        T, B = x.shape[0], x.shape[1]
        D, L, H = 2 if self.bidirectional else 1, self.num_layers, self.hidden_size
        P = self.proj_size or H

        if hx is None:
            h0, c0 = x.new_zeros(L * D, B, P), x.new_zeros(L * D, B, H)
        else:
            h0, c0 = _check_state(hx, unbatched, (L * D, B, P), (L * D, B, H), x.dtype if lowered is None else None)
        if lowered is not None:  # torch.autocast: computed at the weights' precision (see _check_input)
            x, h0, c0 = (t.to(weights[0][0].dtype) for t in (x, h0, c0))

        order = lengths_in = None
        short = False  # whether the longest sequence ends before the padding does (Python, so jit.trace has no branch)
        if lengths is not None:
            lengths = lengths_in = _check_lengths(lengths, T, B)  # lengths_in: the caller's order, for a recording
            if B == 0 or int(lengths.min()) == T:
                lengths = None  # nothing is padded: the plain path is exact and faster
            else:  # sort longest first once, for every layer and direction; undone at the end
                order = torch.argsort(lengths, descending=True, stable=True)
                lengths = lengths[order]
                short = int(lengths[0]) < T
                dev_order = order.to(x.device)
                x = x[: int(lengths[0])].index_select(1, dev_order)
                h0, c0 = h0.index_select(1, dev_order), c0.index_select(1, dev_order)

        recordings = self._recordings
        acts = return_gates or recordings is not None
        sinks = None
        if recordings is not None and self._record_grads and torch.is_grad_enabled():
            sinks = [x.new_zeros(x.shape[0], B, P) for _ in range(L * D)]  # filled by the backward
        with nullcontext() if lowered is None else torch.autocast(x.device.type, enabled=False):
            out, h_n, c_n, gates, cells = self._layers(x, h0, c0, weights, lengths, acts, sinks,
                                                       lowered == torch.bfloat16)

        inverse = None if order is None else torch.argsort(order).to(x.device)
        transpose = self.batch_first and packed is None and not unbatched

        def restore(t: Tensor) -> Tensor:
            """A per-step (T', B, ...) tensor of the sorted batch -> the caller's order, length and layout."""
            if inverse is not None:
                t = t.index_select(1, inverse)
            if short:  # the longest sequence is shorter than the padding: pad back with zeros
                t = torch.cat([t, t.new_zeros(T - t.shape[0], *t.shape[1:])])
            if unbatched:
                return t.squeeze(1)
            return t.transpose(0, 1) if transpose else t

        if inverse is not None:
            h_n, c_n = (t.index_select(1, inverse) for t in (h_n, c_n))
        if lowered is not None:  # what torch.nn.LSTM returns under autocast
            out, h_n, c_n = (t.to(lowered) for t in (out, h_n, c_n))
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
                                        restore, {} if self.cell is None else self.cell.constant_gates()))
        if return_gates:
            return out, (h_n, c_n), gates
        return out, (h_n, c_n)

    def _layers(
        self,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        weights: list[LayerWeights],
        lengths: Tensor | None,
        acts: bool,
        sinks: list[Tensor] | None,
        bf16: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, list, list]:
        """Every layer and direction over the (T, B, I) input, sorted longest first if ``lengths``:
        ``(output, h_n, c_n, gates, cells)``, the last two per layer and direction (None unless ``acts``).
        ``bf16`` (under bfloat16 autocast): the compiled kernel's bfloat16 products, where it has them."""
        D = 2 if self.bidirectional else 1
        run = LAYERS[self.backend]
        noise = NO_NOISE  # made per call only with a regulariser: a decoding step is a few dozen microseconds
        if self.zoneout_c or self.zoneout_h or self.recurrent_dropout:
            noise = Noise(self.zoneout_c, self.zoneout_h, self.recurrent_dropout, self.training)
        if self.weight_drop and self.training:
            weights = [(w_ih, drop_weight(w_hh, self.weight_drop, True), *rest) for w_ih, w_hh, *rest in weights]
        cell = None
        if self.cell is not None or noise.active:
            cell = self.cell or Variant("lstm")
            if run is reference_layer:
                run = cell_layer
            elif not fast_layer_applies():
                run = fast_cell_layer
            # else auto_layer: the kernel where it has the cell (compiled.why_not_kernel_cell), else fast_cell_layer
        elif run is auto_layer and not fast_layer_applies():
            run = reference_layer  # the plain autograd ops that torch.func, forward AD and tracing support
        if run is auto_layer and bf16:  # a variant's and the regularisers' cell too
            run = partial(auto_layer, bf16=True)
        out, h_n, c_n, gates, cells = x, [], [], [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                out = nn.functional.dropout(out, self.dropout, self.training)
            outs = []
            for direction in range(D):
                k = layer * D + direction
                sink = None if sinks is None else sinks[k]
                layer_run = run if cell is None else partial(run, cell=cell, own=self._own(k), noise=noise)
                o, h, c, g, cs = layer_run(out, h0[k], c0[k], weights[k], lengths, direction == 1, acts, sink)
                outs.append(o)
                h_n.append(h)
                c_n.append(c)
                gates.append(g)
                cells.append(cs)
            out = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        return out, torch.stack(h_n), torch.stack(c_n), gates, cells

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        s += f", forget_bias={self.forget_bias}, backend={self.backend!r}"
        if self.cell is not None:
            s += f", cell={self.cell.describe()}"
        for name in ("zoneout_c", "zoneout_h", "recurrent_dropout", "weight_drop"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        return s


def _tag_cell(module: LSTM, state_dict: dict, prefix: str, _metadata) -> None:
    state_dict[prefix + "cell"] = module.cell.describe()


def _check_cell(module: LSTM, state_dict: dict, prefix: str, _metadata, _strict, missing: list, unexpected: list,
                _errors) -> None:
    """A state_dict of another cell, even one with the same parameters (V, NOAF), has its ``cell`` entry reported
    as unexpected (missing, if it has none): ``load_state_dict`` refuses it, unless ``strict=False`` (which loads
    the weights they share). Torch passes strict=True to this hook whatever the caller's, hence the keys."""
    key = prefix + "cell"
    if key not in state_dict:
        missing.append(key)
    elif state_dict.pop(key) != module.cell.describe():
        unexpected.append(key)


def _check_input(x: Tensor, weight: Tensor, input_size: int) -> torch.dtype | None:
    """torch.nn.LSTM's checks of a (T, B, I) input. Returns the dtype to return under torch.autocast, else None.

    Under autocast (for the input's device) torch.nn.LSTM takes inputs of any float dtype and returns the
    autocast dtype; so does ours. It computes at the weights' precision (float32: autocast never lowers
    float64), except that with bfloat16 the compiled kernel (backend="fast" on a CPU with AVX512-BF16) takes its
    matrix products in bfloat16 with float32 accumulation, as torch's bfloat16 LSTM does, for 1.2-1.8x the
    speed; gates, cell states and their maths stay float32 (lstm_train/nn/compiled.py).
    """
    lowered = None
    # _is_any_autocast_enabled first: what torch.nn.LSTM asks too, and cheap enough for every decoding step
    if (
        torch._C._is_any_autocast_enabled()
        and torch.is_autocast_enabled(x.device.type)
        and weight.dtype != torch.float64
        and x.is_floating_point()
    ):
        lowered = torch.get_autocast_dtype(x.device.type)
    elif x.dtype != weight.dtype:
        raise ValueError(f"LSTM: input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}); "
                         f"convert the input: input.to({weight.dtype}), or the model: model.to({x.dtype})")
    if torch.jit.is_tracing():  # sizes are traced tensors there, and a trace keeps no Python check anyway
        return lowered
    if x.shape[-1] != input_size:
        raise RuntimeError(f"LSTM: input has {x.shape[-1]} features, expected input_size={input_size}")
    if x.shape[0] == 0:
        raise RuntimeError("LSTM: expected a sequence length larger than 0, got an input with no time steps")
    return lowered


def _check_state(
    hx: tuple[Tensor, Tensor], unbatched: bool, h_shape: tuple, c_shape: tuple, dtype: torch.dtype | None
) -> tuple[Tensor, Tensor]:
    """torch.nn.LSTM's checks of an initial state; returns it batched: (L*D, B, P) and (L*D, B, H)."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"LSTM: hx must be a pair (h_0, c_0), got {type(hx).__name__}")
    h0, c0 = hx
    rank = 2 if unbatched else 3
    if h0.dim() != rank or c0.dim() != rank:
        kind = "unbatched 2-D" if unbatched else "batched 3-D"
        raise RuntimeError(f"LSTM: for {kind} input, h_0 and c_0 should be {rank}-D, got ({h0.dim()}-D, {c0.dim()}-D)")
    if unbatched:
        h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    for k, (state, expected) in enumerate(((h0, h_shape), (c0, c_shape))):
        if tuple(state.shape) != expected:
            shapes = [(s[0], s[2]) if unbatched else s for s in (expected, tuple(state.shape))]
            raise RuntimeError(f"LSTM: expected hx[{k}] of size {shapes[0]} (num_layers * num_directions, "
                               f"{'' if unbatched else 'batch, '}{'hidden_size' if k else 'proj_size or hidden_size'})"
                               f", got {shapes[1]}")
        if dtype is not None and state.dtype != dtype:
            raise RuntimeError(f"LSTM: hx[{k}] has dtype {state.dtype}, the input {dtype}: give both the same dtype")
    return h0, c0


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
