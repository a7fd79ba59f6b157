"""Argument checks shared by LSTM and LSTMCell, raising what torch.nn.LSTM raises for the same mistake.

torch's RNN constructors raise TypeError for a wrong type and ValueError for a wrong value; their forwards
raise ValueError for an input of the wrong rank or dtype and RuntimeError for wrong sizes. Code written for
torch catches those types, so ours raise the same ones (with messages that also say how to fix it).
"""

from __future__ import annotations

import numbers


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """An int (not a bool) of at least ``minimum``: TypeError for the type, ValueError for the value."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool (True or False), got: {type(value).__name__} {value!r}")


def check_dropout(dropout: object) -> None:
    """A number in [0, 1], 1 included (torch accepts it: everything between layers is dropped in training)."""
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout should be a number in [0, 1] (the chance of zeroing an element), got {dropout!r}")
