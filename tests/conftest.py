"""Fixtures for the training-CLI tests: composing configs the way the CLI does, and a quiet CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lstm_train.config import CONF_DIR

CONF = str(CONF_DIR)


@pytest.fixture
def compose_cfg() -> Iterator[Callable[..., DictConfig]]:
    """compose_cfg("model.hidden_size=8", ...) -> the config lstm-train would run with those overrides."""
    with initialize_config_dir(CONF, version_base="1.3"):
        yield lambda *overrides, **kwargs: compose("config", overrides=list(overrides), **kwargs)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and a busy 2-core machine does not stall them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
