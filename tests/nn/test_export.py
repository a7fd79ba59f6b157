"""Inference export: torch.export of the LSTM and of a trained classifier for a fixed sequence length,
torch.jit.trace, and ONNX via torch.onnx.export run by onnxruntime; every exported program is checked against
eager. (torch.jit.script is not supported: TorchScript is in maintenance upstream.)"""

from __future__ import annotations

import warnings

import pytest
import torch

from lstm_train.nn import LSTM
from lstm_train.runs.trained import load_trained
from lstm_train.train import train
from tests.helpers import compose_config, flat

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {"atol": 1e-6, "rtol": 1e-6}


def test_torch_export_of_the_lstm_for_a_fixed_length():
    """Both backends export the same graph: tracing runs the reference maths (see fast.fast_layer_applies)."""
    torch.manual_seed(0)
    lstm = LSTM(3, 6, 1, batch_first=True, bidirectional=True, proj_size=2).eval()
    x, other = torch.randn(2, 2, 3, 3)
    hx = tuple(torch.randn(2, 2, n) for n in (2, 6))
    program = torch.export.export(lstm, (x, hx))
    for inp in (x, other):  # new values of the traced shapes
        for a, b in zip(flat(program.module()(inp, hx)), flat(lstm(inp, hx)), strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_jit_trace():
    """torch.jit.trace records the reference maths (plain ops) and replays them on new values."""
    torch.manual_seed(1)
    lstm = LSTM(3, 4, 1, bidirectional=True).eval()
    x = torch.randn(3, 2, 3)
    with warnings.catch_warnings():  # no Python branch on a traced size (issue 29): nothing to warn about
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(lstm, (x,), check_trace=False)  # checked below, on other values
    other = torch.randn_like(x)
    for a, b in zip(flat(traced(other)), flat(lstm(other)), strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    """The classifier of a short real run (debug=fast: first_last, 2 epochs), loaded from its checkpoint."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config("debug=fast", "model.bidirectional=true")
    train(cfg, out)
    _, task, model = load_trained(out / "checkpoints" / "best.pt")
    x = torch.randn(5, cfg.task.seq_len, task.inputs.features)
    return model, x


@pytest.mark.slow
def test_torch_export_of_a_trained_classifier(trained_classifier):
    model, x = trained_classifier
    program = torch.export.export(model, (x,))
    for inp in (x, torch.randn_like(x)):
        torch.testing.assert_close(program.module()(inp), model(inp).detach(), **TOL)


@pytest.mark.slow
def test_onnx_export_of_a_trained_classifier(trained_classifier, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model, x = trained_classifier
    path = tmp_path / "classifier.onnx"
    torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"], output_names=["logits"])
    session = ort.InferenceSession(str(path))
    for inp in (x, torch.randn_like(x)):
        (logits,) = session.run(None, {"x": inp.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), model(inp).detach(), atol=1e-5, rtol=1e-5)
