"""lstm-train: a from-scratch LSTM and a Hydra-configured training CLI."""
