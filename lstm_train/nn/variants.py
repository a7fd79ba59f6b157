"""LSTM variants and your own cell: one step of a cell in plain PyTorch, made a whole layer by :class:`LSTM`.

The extension point is :class:`Cell`: a cell says which parameters of its own each layer and direction has,
how they start, and how one time step goes from the step's input projection ``xp`` (B, 4H), the previous
``h`` (B, P) and ``c`` (B, H) to the new ones and the four gate rows it records. ``LSTM(..., cell=MyCell())``
then runs it over stacks, both directions and padded batches, records its gates and cell states, and takes
gradients through autograd. ``backend="fast"`` computes the input projection of the whole sequence in one GEMM
before the loop; the loop and its backward are autograd's (measured for V with layer norm: 1.6-2.7x the
compiled plain cell's forward+backward time at scripts/bench_lstm.py's shapes, 1 thread). A cell gets onto the
compiled kernel by becoming a flag of lstm_train/nn/csrc/recurrence.cpp's cell and its gradient (see
``Variant.kernel_flags``), as the elementwise variants are.

:class:`Variant` is the cell of the variants compared by Greff et al. ("LSTM: A Search Space Odyssey", IEEE
TNNLS 2017), with their names, plus a layer-normalised form (Ba et al. 2016); its :meth:`Variant.step` is the
statement of their equations, which the kernel's flags and fast.py's loop follow. The recurrent regularisers
(zoneout, variational dropout on h, weight drop) are not part of a cell: :class:`Noise` applies them around any
cell's step (and the kernel around its own), and the LSTM masks W_hh itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

# Greff et al.'s names; "lstm" is their NP (no peepholes): torch.nn.LSTM's cell, and this project's default.
VARIANTS = ("lstm", "v", "nig", "nfg", "nog", "niaf", "noaf", "cifg", "fgr")
DESCRIPTIONS = {
    "lstm": "no peepholes (Greff et al.'s NP; torch.nn.LSTM's cell)",
    "v": "vanilla: peepholes from c to the input, forget and output gates (Gers & Schmidhuber 2000)",
    "nig": "V without input gate (i = 1)",
    "nfg": "V without forget gate (f = 1)",
    "nog": "V without output gate (o = 1)",
    "niaf": "V without input activation function (g = its pre-activation)",
    "noaf": "V without output activation function (h = o * c)",
    "cifg": "V with coupled input and forget gates (f = 1 - i)",
    "fgr": "V with full gate recurrence (i, f, o also read the previous step's i, f, o)",
}
# The LSTM's cell and recurrent-regulariser settings (model.* keys, LSTM arguments) of the plain cell, no regulariser:
# the one statement of "plain" for the schemas' defaults, old checkpoints' migration and what is passed on.
PLAIN_CELL = {"variant": "lstm", "layer_norm": False, "zoneout_c": 0.0, "zoneout_h": 0.0, "recurrent_dropout": 0.0,
              "weight_drop": 0.0}
GATES = ("i", "f", "g", "o")  # the rows of weight_ih / weight_hh, in torch's order
LN_EPS = 1e-5
# The compiled kernel's flags (csrc/recurrence.cpp: kNoInputGate, ...), by variant
KERNEL_FLAGS = {"nig": 1, "nfg": 2, "nog": 4, "niaf": 8, "noaf": 16, "cifg": 32}

Params = dict[str, Tensor]  # one layer and direction's parameters by kind: weight_ih, weight_hh, ..., the cell's own


class Cell:
    """The extension point: one step of a recurrent cell (see the module docstring). Subclass it and override
    :meth:`step`, and :meth:`parameter_shapes` / :meth:`reset_parameters` for parameters of its own.

    Every layer and direction has torch.nn.LSTM's ``weight_ih`` (4H, I), ``weight_hh`` (4H, P), ``bias_ih`` and
    ``bias_hh`` (4H) (with ``bias=True``) and ``weight_hr`` (P, H) (with ``proj_size``), initialised as our LSTM
    initialises them, plus the cell's own parameters, registered as ``<kind>_l<layer>[_reverse]``.
    """

    #: whether :meth:`step` reads the previous step's gates (``prev``); else it is always None
    reads_previous_gates: bool = False

    def parameter_shapes(self, hidden_size: int, state_size: int) -> dict[str, tuple[int, ...]]:
        """The cell's own parameters of one layer and direction, by kind (``state_size``: h's size, P or H)."""
        return {}

    def reset_parameters(self, params: Params) -> None:
        """Initialise the cell's own parameters (under no_grad); torch's weights are already initialised."""

    def project(self, x: Tensor, p: Params) -> Tensor:
        """The input's share of the pre-activations, (..., 4H): one GEMM over all steps with backend="fast"."""
        out = x @ p["weight_ih"].t()
        if "bias_ih" in p:
            out = out + (p["bias_ih"] + p["bias_hh"] if "bias_hh" in p else p["bias_ih"])
        return out

    def step(
        self, xp: Tensor, h: Tensor, c: Tensor, prev: Tensor | None, p: Params
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step: ``(h_new, c_new, gates)``, gates (B, 4, H) as recorded (i, f, g, o for an LSTM).
        ``prev``: the previous step's gates (zeros at the first), if :attr:`reads_previous_gates`."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def constant_gates(self) -> dict[str, str]:
        """Recorded gates that the cell does not compute (input, forget, candidate, output): what they hold."""
        return {}


@dataclass(frozen=True)
class Variant(Cell):
    """The cell of one of Greff et al.'s variants (``name`` in :data:`VARIANTS`), optionally layer-normalised.

    Layer norm is Ba et al.'s own LSTM form (their eq. 20-22): LN(W_x x) + LN(W_h h) + b, each over the 4H
    pre-activations of a row (those of the gates the variant has) with its own gain, and h = o * tanh(LN(c)).
    Normalising the input and recurrent products separately keeps their scales apart (the input's share is
    then one LN over the whole sequence, outside the loop); ``bias_ih`` and ``bias_hh`` are the two LNs' shifts,
    so b needs no third parameter.
    New parameters, per layer and direction: ``weight_ci``, ``weight_cf``, ``weight_co`` (H) the peepholes of
    the gates that have one; ``weight_fgr`` (3H, 3H) the recurrence from the previous (i, f, o) to the (i, f, o)
    pre-activations; ``weight_ln_ih``, ``weight_ln_hh`` (4H), ``weight_ln_c`` and ``bias_ln_c`` (H) the gains and
    shift of layer norm. A removed gate keeps its rows in torch's weights (so torch's state_dict loads into
    every variant); they start at zero, get a zero gradient and the gate is recorded as its constant.
    """

    name: str = "v"
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if self.name not in VARIANTS:
            raise ValueError(f"unknown LSTM variant {self.name!r}; choose one of {', '.join(VARIANTS)}")

    @property
    def reads_previous_gates(self) -> bool:  # type: ignore[override]
        return self.name == "fgr"

    @property
    def peepholes(self) -> tuple[str, ...]:
        """The gates that see the cell state (V's three, minus a removed or coupled one)."""
        if self.name == "lstm":
            return ()
        removed = {"nig": "i", "nfg": "f", "nog": "o", "cifg": "f"}.get(self.name)
        return tuple(g for g in ("i", "f", "o") if g != removed)

    @property
    def unused_gates(self) -> tuple[str, ...]:
        """Gates whose rows of torch's weights the maths never reads."""
        return {"nig": ("i",), "nfg": ("f",), "nog": ("o",), "cifg": ("f",)}.get(self.name, ())

    def parameter_shapes(self, hidden_size: int, state_size: int) -> dict[str, tuple[int, ...]]:
        H = hidden_size
        shapes: dict[str, tuple[int, ...]] = {f"weight_c{g}": (H,) for g in self.peepholes}
        if self.name == "fgr":
            shapes["weight_fgr"] = (3 * H, 3 * H)
        if self.layer_norm:
            shapes.update(weight_ln_ih=(4 * H,), weight_ln_hh=(4 * H,), weight_ln_c=(H,), bias_ln_c=(H,))
        return shapes

    def reset_parameters(self, params: Params) -> None:
        """Peepholes at zero (the cell starts as NP), the gate recurrence Xavier-uniform per gate like W_hh,
        layer norm's gains at one and shift at zero; a removed gate's rows of torch's weights at zero. For
        CIFG the forget bias goes to the input gate negated, so f = 1 - i starts as a forget gate would."""
        H = params["weight_hh"].shape[0] // 4
        for kind, value in params.items():
            if kind.startswith("weight_c") or kind == "bias_ln_c":
                value.zero_()
            elif kind.startswith("weight_ln"):
                value.fill_(1.0)
            elif kind == "weight_fgr":
                bound = math.sqrt(6.0 / (3 * H + H))
                value.uniform_(-bound, bound)
        if self.name == "cifg" and "bias_ih" in params:
            params["bias_ih"][:H] = -params["bias_ih"][H : 2 * H]  # chrono already does this
        for gate in self.unused_gates:
            rows = slice(GATES.index(gate) * H, (GATES.index(gate) + 1) * H)
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if kind in params:
                    params[kind][rows] = 0.0

    def project(self, x: Tensor, p: Params) -> Tensor:
        if not self.layer_norm:
            return super().project(x, p)
        return self._gate_norm(x @ p["weight_ih"].t(), p["weight_ln_ih"], p.get("bias_ih"))

    def _gate_norm(self, v: Tensor, gain: Tensor, shift: Tensor | None) -> Tensor:
        """Layer norm of (..., 4H) pre-activations over the gates this variant has: a removed gate has no
        pre-activation in the paper, so its rows (left at zero) are not part of the statistics either."""
        if not self.unused_gates:
            return F.layer_norm(v, gain.shape, gain, shift, LN_EPS)
        H = v.shape[-1] // 4
        used = [k for k, gate in enumerate(GATES) if gate not in self.unused_gates]
        pick = lambda t: torch.cat([t[..., k * H : (k + 1) * H] for k in used], dim=-1)  # noqa: E731
        normed = F.layer_norm(pick(v), (len(used) * H,), pick(gain), None if shift is None else pick(shift), LN_EPS)
        parts = iter(normed.split(H, dim=-1))
        return torch.cat([next(parts) if k in used else torch.zeros_like(v[..., :H]) for k in range(4)], dim=-1)

    def step(
        self, xp: Tensor, h: Tensor, c: Tensor, prev: Tensor | None, p: Params
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Greff et al.'s equations (their z, y are g, h here; x's share ``xp`` = W_x x + b, see :meth:`project`)."""
        name = self.name
        recurrent = h @ p["weight_hh"].t()  # R y_{t-1}
        if self.layer_norm:
            recurrent = self._gate_norm(recurrent, p["weight_ln_hh"], p.get("bias_hh"))
        a_i, a_f, a_g, a_o = (xp + recurrent).chunk(4, dim=-1)
        if prev is not None:  # FGR: the previous step's i, f, o feed every sigmoid gate
            gate_rec = torch.cat([prev[:, 0], prev[:, 1], prev[:, 3]], dim=-1) @ p["weight_fgr"].t()
            r_i, r_f, r_o = gate_rec.chunk(3, dim=-1)
            a_i, a_f, a_o = a_i + r_i, a_f + r_f, a_o + r_o
        if "weight_ci" in p:
            a_i = a_i + p["weight_ci"] * c  # peephole: the input gate sees c_{t-1}
        if "weight_cf" in p:
            a_f = a_f + p["weight_cf"] * c
        i = torch.ones_like(a_i) if name == "nig" else torch.sigmoid(a_i)
        f = 1 - i if name == "cifg" else torch.ones_like(a_f) if name == "nfg" else torch.sigmoid(a_f)
        g = a_g if name == "niaf" else torch.tanh(a_g)  # block input
        c_new = f * c + i * g
        if "weight_co" in p:
            a_o = a_o + p["weight_co"] * c_new  # the output gate sees the new c_t
        o = torch.ones_like(a_o) if name == "nog" else torch.sigmoid(a_o)
        s = c_new
        if self.layer_norm:
            s = F.layer_norm(s, p["weight_ln_c"].shape, p["weight_ln_c"], p["bias_ln_c"], LN_EPS)
        h_new = o * (s if name == "noaf" else torch.tanh(s))
        if "weight_hr" in p:
            h_new = h_new @ p["weight_hr"].t()
        return h_new, c_new, torch.stack([i, f, g, o], dim=-2)

    def describe(self) -> str:
        return f"variant={self.name}" + (" with layer norm" if self.layer_norm else "")

    def kernel_flags(self) -> int | None:
        """What the compiled kernel's cell is told (csrc/recurrence.cpp, Variant): a bit per change from V, or None
        where the kernel has not this cell (layer norm and FGR, whose maths is not elementwise)."""
        if self.layer_norm or self.name == "fgr":
            return None
        return KERNEL_FLAGS.get(self.name, 0)

    def kernel_peepholes(self, own: Params) -> Tensor | None:
        """The (3, H) peepholes of i, f, o as the kernel reads them (zeros for a gate without), None for NP."""
        if not self.peepholes:
            return None
        some = own[f"weight_c{self.peepholes[0]}"]
        return torch.stack([own.get(f"weight_c{g}", torch.zeros_like(some)) for g in ("i", "f", "o")])

    def constant_gates(self) -> dict[str, str]:
        return {
            "nig": {"input": "none: 1"}, "nfg": {"forget": "none: 1"}, "nog": {"output": "none: 1"},
            "cifg": {"forget": "1 - input"}, "niaf": {"candidate": "no tanh"},
        }.get(self.name, {})


@dataclass(frozen=True)
class Noise:
    """The recurrent regularisers applied around a cell's step, in training (``training``) or as at test.

    - ``zoneout_c`` / ``zoneout_h`` (Krueger et al. 2017): in training each unit keeps its previous value with
      that probability, a fresh Bernoulli mask per unit and step; at test the expectation, z * old + (1 - z) * new.
      The step itself (its output gate's peephole, tanh(c)) uses the new, not zoned-out, c. The training masks
      are counter-based (:func:`zoneout_bits`): a hash of a seed drawn per layer and direction and call, the step,
      the row and the unit, which the compiled kernel computes where it uses them (and again in its backward)
      instead of storing them; each rate is rounded down to a multiple of 2^-16 (at test too, so that the
      expectation is the training masks' own).
    - ``recurrent_dropout`` (Gal & Ghahramani 2016): the h entering the recurrence is multiplied by one dropout
      mask per sequence (per layer and direction), the same at every step; nothing at test.
    """

    zoneout_c: float = 0.0
    zoneout_h: float = 0.0
    recurrent_dropout: float = 0.0
    training: bool = False

    def __post_init__(self) -> None:
        for name in ("zoneout_c", "zoneout_h", "recurrent_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")

    @property
    def active(self) -> bool:
        return bool(self.zoneout_c or self.zoneout_h or (self.recurrent_dropout and self.training))

    def recurrent_mask(self, h0: Tensor) -> Tensor | None:
        """One (B, P) mask for the whole sequence, scaled by 1 / (1 - p); None when there is none."""
        if not (self.training and self.recurrent_dropout):
            return None
        return F.dropout(torch.ones_like(h0), self.recurrent_dropout, training=True)

    @staticmethod
    def zoneout(old: Tensor, new: Tensor, keep: Tensor | None) -> Tensor:
        """``new`` zoned out towards ``old`` with one step's mask ``keep`` (of :meth:`zoneout_masks`; None: no
        zoneout)."""
        if keep is None:
            return new
        return torch.lerp(new, old, keep)  # keep * old + (1 - keep) * new

    def zoneout_seed(self) -> tuple[int, int] | None:
        """The seed of one layer and direction's zoneout masks in training: two 32-bit numbers drawn from torch's
        (CPU) default generator, so that ``torch.manual_seed`` repeats them; None (nothing drawn) otherwise. Every
        path draws it so, before its loop and its recurrent dropout mask, so that a seed gives them all the same
        masks."""
        if not (self.training and (self.zoneout_c or self.zoneout_h)):
            return None
        s0, s1 = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
        return s0, s1

    def zoneout_masks(
        self, seed: tuple[int, int] | None, like: Tensor, h_size: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """Every step's zoneout masks of c, shaped as ``like`` (T, B, H), and of h (T, B, ``h_size``), in the loop's
        step order: in training (``seed``) 1 where the unit keeps its previous value (:func:`zoneout_bits`), at
        test the (rounded) rate itself (z old + (1 - z) new); None for a rate of 0."""
        T, B, H = like.shape
        bits = None if seed is None else zoneout_bits(seed, T, B, H, like.device)

        def mask(rate: float, high: bool, size: int) -> Tensor | None:
            if not rate:
                return None
            below = int(rate * 65536)  # the kernel's floor(rate 2^16)
            if bits is None:  # the training masks' exact mean
                return torch.full((T, B, size), below / 65536, dtype=like.dtype, device=like.device)
            # c: the high 16 bits below it (so all 32 below it times 2^16), h: the low 16
            keep = bits < below << 16 if high else (bits[..., :size] & 0xFFFF) < below
            return keep.to(like.dtype)

        return mask(self.zoneout_c, True, H), mask(self.zoneout_h, False, h_size)


_U32 = 0xFFFFFFFF


def mix32(x: Tensor) -> Tensor:
    """The kernel's 32-bit hash (csrc/recurrence.cpp, mix32: the form of MurmurHash3's finaliser, C. Wellons'
    lowbias32 constants) on int64 tensors of values in [0, 2^32), bit for bit; a new tensor."""
    x = x ^ (x >> 16)
    x.mul_(_wrapped(0x7FEB352D)).bitwise_and_(_U32)
    x ^= x >> 15
    x.mul_(_wrapped(0x846CA68B)).bitwise_and_(_U32)
    x ^= x >> 16
    return x


def _wrapped(m: int) -> int:
    """A 32-bit multiplier as one in (-2^31, 2^31) with the same low 32 bits: x times it, for x in [0, 2^32), stays
    within int64 (|product| < 2^63, no overflow) and its low 32 bits are those of x * m."""
    return m - (1 << 32) if m >= 1 << 31 else m


def zoneout_bits(seed: tuple[int, int], steps: int, rows: int, units: int, device: torch.device) -> Tensor:
    """The 32 bits behind zoneout's masks, (steps, rows, units) int64, in the loop's step order: at step t, row b,
    unit j, mix32(key(t, b) ^ mix32(j + 0x9e3779b9)) with key(t, b) = mix32(mix32(t ^ s0) ^ mix32(b ^ s1)) of the
    seed (s0, s1). c keeps its previous value where the high 16 bits are below floor(rate_c 2^16), h where the low
    16 are below floor(rate_h 2^16): every (t, b, j) gets its own bits, whatever the threads or the path, and the
    compiled kernel recomputes them where it needs them."""
    s0, s1 = seed
    count = partial(torch.arange, dtype=torch.int64, device=device)
    key = mix32(mix32(count(steps) ^ s0)[:, None] ^ mix32(count(rows) ^ s1)[None, :])
    return mix32(key[..., None] ^ mix32((count(units) + 0x9E3779B9) & _U32))


def drop_weight(w_hh: Tensor, rate: float, training: bool) -> Tensor:
    """Weight drop (DropConnect on W_hh, Merity et al. 2018): one mask per forward call, the same at every step,
    scaled by 1 / (1 - rate) as dropout is; W_hh itself at test."""
    if not (training and rate):
        return w_hh
    # Bernoulli(1 - rate) from uniform draws: 3x faster than F.dropout's bernoulli_ on CPU (0.3 against 0.85 ms at
    # hidden size 128), which cost the plain cell 5% of a training step
    keep = (torch.rand_like(w_hh) >= rate).to(w_hh.dtype).mul_(1 / (1 - rate))
    return w_hh * keep
