"""Our LSTM, written from the gate equations: a drop-in for torch.nn.LSTM and torch.nn.LSTMCell."""

from .backend import BACKENDS, TorchLSTM, build_lstm
from .cell import LSTMCell, init_lstm_weights_, lstm_cell
from .lstm import LSTM

__all__ = ["BACKENDS", "LSTM", "LSTMCell", "TorchLSTM", "build_lstm", "init_lstm_weights_", "lstm_cell"]
