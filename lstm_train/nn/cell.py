"""The LSTM cell: the gate equations of the seed article, one time step at a time.

Weights are stacked as torch.nn.LSTMCell stacks them: ``weight_ih`` is (4H, input_size) and
``weight_hh`` is (4H, H), their row blocks being the input (i), forget (f), cell-candidate (g) and
output (o) gates, in that order. The same names, shapes and order make state dicts interchangeable.
With a projection (torch.nn.LSTM's ``proj_size`` P), ``weight_hr`` (P, H) maps o * tanh(c) to h, so h
has P features and ``weight_hh`` is (4H, P).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checks import check_bool, check_int


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """One LSTM step. Returns ``(h_new, c_new, (i, f, g, o))``, the last being the gate activations.

    Either bias may be None (the fast implementation's backward passes their sum as ``bias_ih``)."""
    pre = x @ weight_ih.t() + h @ weight_hh.t()
    for b in (bias_ih, bias_hh):
        if b is not None:
            pre = pre + b
    i, f, g, o = pre.chunk(4, dim=-1)
    i = torch.sigmoid(i)  # input gate: how much of the candidate to write
    f = torch.sigmoid(f)  # forget gate: how much of the old cell state to keep
    g = torch.tanh(g)  # cell candidate
    o = torch.sigmoid(o)  # output gate: how much of the cell state to expose
    c_new = f * c + i * g  # the additive update: the gradient highway
    h_new = o * torch.tanh(c_new)
    if weight_hr is not None:
        h_new = h_new @ weight_hr.t()  # the projection: h has proj_size features
    return h_new, c_new, (i, f, g, o)


@dataclass(frozen=True)
class Chrono:
    """Chrono initialisation of the gate biases (Tallec and Ollivier, ICLR 2018), a ``forget_bias`` value:
    each unit's forget bias is log(u), u ~ U(1, max_len - 1), and its input bias the negative of that.

    A unit with forget bias b keeps its cell state for about 1 + e^b steps, so the units' memory spans are
    spread from 1 step to ``max_len`` (the longest dependency to learn) instead of all being about 1 + e^1.
    """

    max_len: int

    def __post_init__(self) -> None:
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 2:
            raise ValueError(f"Chrono.max_len must be an integer >= 2, got {self.max_len!r}")


def init_lstm_weights_(
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    forget_bias: float | Chrono,
    weight_hr: Tensor | None = None,
) -> None:
    """Xavier-uniform weights per gate block (and for the projection ``weight_hr``); zero biases except the
    forget gate's (and, with :class:`Chrono`, the input gate's).

    Each gate is its own map from the input (or hidden state) to H units, as in the seed's code with
    one Linear layer per gate, so Xavier's fan-out is H, not 4H. The whole forget bias goes into
    ``bias_ih`` and ``bias_hh`` stays zero, so the effective forget bias (``bias_ih + bias_hh``, the
    only thing the maths sees) is exactly ``forget_bias``. The seed's code sets both halves to 1.0,
    an effective 2.0, although its text says 1.0; we follow the text (Jozefowicz et al., 2015).
    """
    hidden = weight_hh.shape[0] // 4
    with torch.no_grad():
        for w in (weight_ih, weight_hh):
            bound = math.sqrt(6.0 / (w.shape[1] + hidden))
            w.uniform_(-bound, bound)
        if weight_hr is not None:  # (P, H): a plain linear map from H to P units
            bound = math.sqrt(6.0 / (weight_hr.shape[0] + weight_hr.shape[1]))
            weight_hr.uniform_(-bound, bound)
        if bias_ih is not None:
            bias_ih.zero_()
            bias_hh.zero_()
            if isinstance(forget_bias, Chrono):
                chrono = torch.log(bias_ih.new_empty(hidden).uniform_(1.0, max(forget_bias.max_len - 1, 1)))
                bias_ih[hidden : 2 * hidden] = chrono
                bias_ih[:hidden] = -chrono
            else:
                bias_ih[hidden : 2 * hidden].fill_(forget_bias)


class LSTMCell(nn.Module):
    """A drop-in for torch.nn.LSTMCell: same constructor, parameters and ``forward(x, state) -> (h, c)``.

    Unbatched input (a 1-D ``x``) is accepted as torch does, and wrong shapes raise what torch raises (a
    state is never broadcast). ``forget_bias`` sets the effective forget-gate bias at initialisation (see
    :func:`init_lstm_weights_`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        forget_bias: float | Chrono = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int("input_size", input_size)
        check_int("hidden_size", hidden_size)
        check_bool("bias", bias)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.forget_bias = forget_bias
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_lstm_weights_(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.forget_bias)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        # torch.nn.LSTMCell's checks and exception types: ValueError for a rank, RuntimeError for a size
        if x.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {x.dim()}D instead")
        for k, s in enumerate(state or ()):
            if s.dim() not in (1, 2):
                raise ValueError(f"LSTMCell: Expected hx[{k}] to be 1D or 2D, got {s.dim()}D instead")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"LSTMCell: input has {x.shape[-1]} features, expected input_size={self.input_size}")
        unbatched = x.dim() == 1
        expected = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
        for k, s in enumerate(state or ()):
            if tuple(s.shape) != expected:
                raise RuntimeError(f"LSTMCell: hx[{k}] has shape {tuple(s.shape)}, expected {expected}"
                                   f" ({'' if unbatched else 'batch, '}hidden_size)")
        if unbatched:
            x = x.unsqueeze(0)
            state = None if state is None else (state[0].unsqueeze(0), state[1].unsqueeze(0))
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c, _ = lstm_cell(x, *state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
