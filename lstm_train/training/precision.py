"""trainer.precision: float32, or bfloat16 autocast around forward and loss (the LSTM's products included,
lstm_train/nn/compiled.py); the backward follows the forward's dtypes. Weights, optimizer state and the loss stay
float32."""

from __future__ import annotations

import platform
from contextlib import AbstractContextManager, nullcontext

import torch

from lstm_train.errors import ConfigError
from lstm_train.nn import compiled
from lstm_train.nn.extension import bf16_products


class Precision:
    """trainer.precision (fp32 or bf16) on ``device``: bf16 is refused where bfloat16 is missing or emulated."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.bf16 = precision == "bf16"
        self.device = device
        if self.bf16:
            check_bf16(device)

    def autocast(self) -> AbstractContextManager:
        """The context forward and loss run in."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()


def check_bf16(device: torch.device) -> None:
    """A ConfigError where bfloat16 is missing, or emulated (an x86 CPU without AVX512-BF16: matrix products
    measured ~70x slower than float32)."""
    kind = device.type
    if kind not in ("cpu", "cuda"):
        raise ConfigError("trainer.precision", f"bf16 autocast runs on cpu and cuda devices, not {kind}: "
                          "set trainer.precision=fp32")
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision", f"{torch.cuda.get_device_name(device)} has no bfloat16: "
                          "set trainer.precision=fp32")
    if kind == "cpu" and platform.machine().lower() in ("x86_64", "amd64") and not bf16_products():
        raise ConfigError("trainer.precision", "this CPU has no AVX512-BF16, so bfloat16 products would be "
                          "emulated, far slower than float32: set trainer.precision=fp32")
    if kind == "cpu":  # a setting of the LSTM's bfloat16 products that this CPU cannot run: before the run starts
        try:
            if compiled.bf16_setting() in ("kernel", "onednn"):  # these two ask for the kernel: it is built here
                compiled.bf16_products_here()
        except (ValueError, RuntimeError) as e:  # RuntimeError: the kernel that the setting asks for cannot build
            raise ConfigError("trainer.precision", str(e)) from None
