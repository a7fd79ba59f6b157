"""trainer.precision: bf16 autocast where bfloat16 is native, refused where it is missing or emulated."""

from __future__ import annotations

import pytest
import torch

from lstm_train.errors import ConfigError
from lstm_train.nn import compiled
from lstm_train.training import precision
from lstm_train.training.precision import Precision


def test_fp32_runs_without_autocast():
    with Precision("fp32", torch.device("cpu")).autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_runs_forward_and_loss_under_bfloat16_autocast(monkeypatch):
    monkeypatch.setattr(precision, "bf16_products", lambda: True)
    with Precision("bf16", torch.device("cpu")).autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bf16_is_refused_where_it_would_be_emulated_or_cannot_run(monkeypatch):
    monkeypatch.setattr(precision, "bf16_products", lambda: False)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    with pytest.raises(ConfigError, match=r"^trainer.precision: this CPU has no AVX512-BF16, so bfloat16 products "
                                          r"would be emulated, far slower than float32: set trainer.precision=fp32$"):
        Precision("bf16", torch.device("cpu"))
    Precision("fp32", torch.device("cpu"))  # no check without bf16
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")  # no such measurement there
    Precision("bf16", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^trainer.precision: bf16 autocast runs on cpu and cuda devices, not "
                                          r"mps: set trainer.precision=fp32$"):
        Precision("bf16", torch.device("mps"))


def test_a_bf16_products_setting_this_cpu_cannot_run_is_refused_before_the_run(monkeypatch):
    monkeypatch.setattr(precision, "bf16_products", lambda: True)
    monkeypatch.setenv("LSTM_TRAIN_BF16_PRODUCTS", "amx")
    with pytest.raises(ConfigError, match=r"^trainer.precision: LSTM_TRAIN_BF16_PRODUCTS=amx is not one of auto, "
                                          r"kernel, onednn, fp32; unset it to let the LSTM choose \(auto\)$"):
        Precision("bf16", torch.device("cpu"))
    Precision("fp32", torch.device("cpu"))  # not read without bf16
    monkeypatch.setenv("LSTM_TRAIN_BF16_PRODUCTS", "fp32")  # needs no kernel: nothing is built to check it
    monkeypatch.setattr(compiled, "load", lambda: pytest.fail("the kernel was loaded"))
    Precision("bf16", torch.device("cpu"))
    monkeypatch.setenv("LSTM_TRAIN_BF16_PRODUCTS", "onednn")
    monkeypatch.setattr(compiled, "bf16_products", lambda: True)
    monkeypatch.setattr(compiled, "onednn_bf16", lambda: 0)
    with pytest.raises(ConfigError, match=r"^trainer.precision: LSTM_TRAIN_BF16_PRODUCTS=onednn, but this torch's "
                                          r"oneDNN has no bfloat16 brgemm; set it to kernel or unset it$"):
        Precision("bf16", torch.device("cpu"))
