"""Our LSTM, written from the gate equations: a drop-in for torch.nn.LSTM and torch.nn.LSTMCell."""

from .backend import BACKENDS, CELLS, TorchGRU, TorchLSTM, TorchRNN, build_lstm, build_recurrent
from .cell import Chrono, LSTMCell, init_lstm_weights_, lstm_cell
from .lstm import LSTM
from .record import Recording

__all__ = [
    "BACKENDS", "CELLS", "LSTM", "Chrono", "LSTMCell", "Recording", "TorchGRU", "TorchLSTM", "TorchRNN", "build_lstm",
    "build_recurrent", "init_lstm_weights_", "lstm_cell",
]
