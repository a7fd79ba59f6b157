"""Our LSTM, written from the gate equations: a drop-in for torch.nn.LSTM and torch.nn.LSTMCell."""

from .backend import BACKENDS, CELLS, TorchGRU, TorchLSTM, TorchRNN, build_lstm, build_recurrent
from .cell import Chrono, LSTMCell, init_lstm_weights_, lstm_cell
from .lstm import LSTM
from .record import Recording
from .variants import PLAIN_CELL, VARIANTS, Cell, Noise, Variant

__all__ = [
    "BACKENDS",
    "CELLS",
    "LSTM",
    "PLAIN_CELL",
    "VARIANTS",
    "Cell",
    "Chrono",
    "LSTMCell",
    "Noise",
    "Recording",
    "TorchGRU",
    "TorchLSTM",
    "TorchRNN",
    "Variant",
    "build_lstm",
    "build_recurrent",
    "init_lstm_weights_",
    "lstm_cell",
]
