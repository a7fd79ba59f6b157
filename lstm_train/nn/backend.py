"""The LSTM's backend: what runs it, one name per level, and one constructor for all of them and the baselines.

The choice has one name at each level, with the same value words where the levels mean the same thing
(the environment variable chooses within ``fast`` only; docs/lstm/index.md#backends has this table too):

    config            LSTM argument         environment
    model.backend=    LSTM(backend=...)     LSTM_TRAIN_FAST_PATH=   what runs
    fast (default)    "fast" (default)      auto (default)          the compiled C++ kernel (compiled.py) where it
                                                                    applies, else fast.py's pure-PyTorch loop
                                            compiled                the kernel; an error if it cannot be built
                                            pytorch                 fast.py's pure-PyTorch loop, never the kernel
    reference         "reference"           (not read)              reference.py: the equations under autograd
    torch             (build_lstm("torch")) (not read)              torch.nn.LSTM (:class:`TorchLSTM`)

Under bfloat16 autocast, ``LSTM_TRAIN_BF16_PRODUCTS`` chooses how the kernel computes its bfloat16 products:
auto (default: oneDNN's brgemm where it runs, on AMX tiles where the CPU has them, else the kernel's own loops),
onednn, kernel, or fp32 (float32 products); compiled.py and docs/lstm/speed.md#mixed-precision-bfloat16.

``fast`` and ``reference`` are our LSTM's two implementations; ``torch`` is torch.nn.LSTM behind the
same interface (``lengths=`` packs for it), initialised the same way, so that one config compares
them side by side and differences come from the implementation alone.

:func:`build_recurrent` adds torch's GRU and vanilla (tanh) RNN as baselines behind the LSTM's interface:
``forward(x, (h0, c0), lengths=...) -> (output, (h_n, c_n))``, where c is all zeros (they have no cell
state), so every model runs them unchanged. They keep torch's own initialisation; the backend choice
applies to the LSTM only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cell import Chrono, init_lstm_weights_
from .lstm import LSTM

BACKENDS = ("fast", "reference", "torch")
CELLS = ("lstm", "gru", "rnn")


class TorchLSTM(nn.LSTM):
    """torch.nn.LSTM with our initialisation and our ``forward(..., lengths=...)`` signature."""

    def __init__(self, *args, forget_bias: float | Chrono = 1.0, **kwargs) -> None:
        self.forget_bias = forget_bias  # read by reset_parameters, which nn.LSTM's constructor calls
        super().__init__(*args, **kwargs)

    def reset_parameters(self) -> None:
        if not hasattr(self, "forget_bias"):  # nn.LSTM's constructor runs before ours has set it
            return
        for names in self._all_weights:  # per layer and direction, e.g. weight_ih_l0, ..., weight_hr_l0
            by_kind = {name.rsplit("_l", 1)[0]: getattr(self, name) for name in names}
            kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            init_lstm_weights_(*(by_kind.get(k) for k in kinds), self.forget_bias, by_kind.get("weight_hr"))

    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | Sequence[int] | None = None,
        return_gates: bool = False,
    ):
        if return_gates:
            raise ValueError("return_gates needs our LSTM (backend fast or reference): torch.nn.LSTM hides its gates")
        return _run_padded(super().forward, input, hx, lengths, self.batch_first)


class _Baseline:
    """A torch.nn.GRU or torch.nn.RNN that takes and returns LSTM-shaped states (see the module docstring)."""

    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | Sequence[int] | None = None,
        return_gates: bool = False,
    ):
        if return_gates:
            raise ValueError(f"return_gates needs an LSTM: a {type(self).__name__} has no gates")
        out, h_n = _run_padded(super().forward, input, None if hx is None else hx[0], lengths, self.batch_first)
        return out, (h_n, torch.zeros_like(h_n))


class TorchGRU(_Baseline, nn.GRU):
    pass


class TorchRNN(_Baseline, nn.RNN):  # tanh nonlinearity, torch's default
    pass


def _run_padded(forward, input: Tensor, hx, lengths: Tensor | Sequence[int] | None, batch_first: bool):
    """A torch RNN module's forward on a right-padded batch: packed in, padded back to the input's length."""
    if lengths is None:
        return forward(input, hx)
    total = input.shape[1 if batch_first else 0]
    packed = pack_padded_sequence(input, torch.as_tensor(lengths).cpu(), batch_first=batch_first, enforce_sorted=False)
    out, state = forward(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=total)
    return out, state


# LSTM arguments that only our LSTM has: the variants, your own cell and the recurrent regularisers
OURS_ONLY = ("variant", "layer_norm", "zoneout_c", "zoneout_h", "recurrent_dropout", "weight_drop", "cell")


def build_lstm(backend: str, *args, **kwargs) -> nn.Module:
    """An LSTM of the given backend; the arguments are those of :class:`lstm_train.nn.LSTM`."""
    if backend == "torch":
        ours = [k for k in OURS_ONLY if k in kwargs]
        if ours:
            raise ValueError(f"{', '.join(ours)} need our LSTM (backend fast or reference): torch.nn.LSTM has none")
        return TorchLSTM(*args, **kwargs)
    if backend in ("fast", "reference"):
        return LSTM(*args, backend=backend, **kwargs)
    raise ValueError(f"unknown LSTM backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def build_recurrent(cell: str, backend: str, *args, forget_bias: float | Chrono = 1.0, **kwargs) -> nn.Module:
    """An LSTM of ``backend`` (``cell="lstm"``), or torch's GRU or tanh RNN baseline (the backend is unused)."""
    if cell == "lstm":
        return build_lstm(backend, *args, forget_bias=forget_bias, **kwargs)
    ours = [k for k in OURS_ONLY if k in kwargs]
    if ours:
        raise ValueError(f"{', '.join(ours)} apply to an LSTM; a {cell.upper()} has no such cell (use cell='lstm')")
    if cell == "gru":
        return TorchGRU(*args, **kwargs)
    if cell == "rnn":
        return TorchRNN(*args, **kwargs)
    raise ValueError(f"unknown recurrent cell {cell!r}; choose one of {', '.join(CELLS)}")
