"""What an LSTM records on demand: gates, cell states and the gradient reaching each step's hidden state.

Recording is opt-in per module (:meth:`lstm_train.nn.LSTM.recording`); an LSTM not being recorded does no
extra work. The gradients are those of whatever backward runs through the recorded forward
(``loss.backward()`` or ``torch.autograd.grad``), so recording needs no second copy of the cell maths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Recording:
    """One forward call. Lists hold one tensor per layer and direction, in the order of ``names`` (that of
    ``h_n``: ``l0``, ``l0_reverse``, ``l1``, ...); time and batch are laid out as the LSTM's output
    ((B, T, ...) if ``batch_first``), and every value past a sequence's length is zero.

    - ``gates``: (T, B, 4, H) activations in i, f, g, o order, exactly what ``return_gates`` returns;
    - ``cells``: (T, B, H) cell states c_t;
    - ``constants``: gates the cell does not compute, by name (input, forget, candidate, output), with what is
      recorded instead (e.g. "none: 1" for NIG's input gate, "1 - input" for CIFG's forget gate);
    - ``hidden_grads``: (T, B, H) dL/dh_t, the total gradient of the loss with respect to each step's hidden
      state (through the output, the next step and h_n), once a backward has run through this forward;
      None if the LSTM was recorded without ``grads`` or ran without autograd. With a projection, h and so
      dL/dh_t have ``proj_size`` features.
    """

    names: list[str]
    gates: list[Tensor]
    cells: list[Tensor]
    lengths: Tensor | None
    batch_first: bool
    _dh: list[Tensor] | None = field(default=None, repr=False)
    _restore: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    constants: dict[str, str] = field(default_factory=dict)

    @property
    def hidden_grads(self) -> list[Tensor] | None:
        if self._dh is None:
            return None
        return [self._restore(dh) for dh in self._dh]
