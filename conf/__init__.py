"""The configs, installed as the package lstm_train.conf (pyproject maps it), so Hydra finds them anywhere."""
