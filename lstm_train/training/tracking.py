"""The one place that writes TensorBoard: scalars, histograms and figures during training, and HParams."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from lstm_train.config import flatten


class Tracker:
    """A SummaryWriter on the run dir. Tag names are the contract of docs/training.md#tensorboard's table."""

    def __init__(self, log_dir: str | Path | None, purge_step: int | None = None) -> None:
        """``log_dir`` None: a tracker that writes nothing (the ranks > 0 of a data-parallel run).
        ``purge_step``: TensorBoard hides the events of earlier files in ``log_dir`` from that step on (a run
        resumed from a step before the one its killed process had logged up to)."""
        self.writer = None if log_dir is None else SummaryWriter(
            log_dir=str(log_dir), max_queue=1000, flush_secs=30, purge_step=purge_step
        )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def histograms(self, values: Mapping[str, Tensor], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_histogram(tag, value.detach().float().cpu(), step)

    def text(self, values: Mapping[str, str], step: int, markdown: bool = False) -> None:
        """Text in the text tab: Markdown as it is, or plain text (a sample) indented to show verbatim."""
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_text(tag, value if markdown else "    " + value.replace("\n", "\n    "), step)

    def figures(self, values: Mapping[str, Any], step: int) -> None:
        """matplotlib Figures as images. Drawn on an Agg canvas here: SummaryWriter.add_figure imports pyplot,
        which would pick a GUI backend for the whole process (a user's notebook included)."""
        if self.writer is None:
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        for tag, figure in values.items():
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
            width, height = canvas.get_width_height(physical=True)
            self.writer.add_image(tag, rgba.view(height, width, 4)[..., :3], step, dataformats="HWC")

    def hparams(self, config: Mapping[str, Any], metric_tags: list[str]) -> None:
        """Register the run in TensorBoard's HParams tab.

        The metric columns read the latest value of the named scalar tags (val/acc, test/acc, ...), so this
        is written once at the start (running runs appear at once) and the metrics fill in as they are
        logged. Unlike SummaryWriter.add_hparams, it adds no duplicate scalars and no second event file.
        """
        if self.writer is None:
            return
        flat = {k: _hparam_value(v) for k, v in flatten(config).items()}
        for summary in hparams(flat, dict.fromkeys(metric_tags, 0.0)):
            self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()



def _hparam_value(value: Any) -> bool | int | float | str:
    # HParams takes bool, number or string only: show null and lists as the YAML would.
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)
