"""The classifier: the seed's shape and parameter count, every backend, bidirectional, padded batches."""

from __future__ import annotations

import pytest
import torch

from lstm_train.models import build_model, count_parameters
from lstm_train.nn import BACKENDS
from lstm_train.tasks import build_task


def test_seed_classifier_has_204290_parameters(compose_cfg):
    cfg = compose_cfg("model.hidden_size=128", "model.num_layers=2", "task.val_size=1", "task.test_size=1")
    model = build_model(cfg.model, build_task(cfg.task))
    assert count_parameters(model) == 204_290
    assert model.head.in_features == 256  # both layers' final h


def test_backends_compute_the_same_function(compose_cfg):
    overrides = ["model.hidden_size=8", "task.val_size=4", "task.test_size=4"]
    models = {}
    for backend in BACKENDS:
        cfg = compose_cfg(*overrides, f"model.backend={backend}")
        models[backend] = build_model(cfg.model, build_task(cfg.task)).double()
    state = models["fast"].state_dict()
    x = torch.randn(5, 30, 10, dtype=torch.float64)
    outputs = {}
    for backend, model in models.items():
        model.load_state_dict(state)
        outputs[backend] = model(x)
    for backend in BACKENDS:
        torch.testing.assert_close(outputs[backend], outputs["torch"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_predictions(compose_cfg, bidirectional):
    cfg = compose_cfg("model.hidden_size=8", f"model.bidirectional={bidirectional}", "task.val_size=4",
                      "task.test_size=4")
    model = build_model(cfg.model, build_task(cfg.task)).double()
    assert model.head.in_features == 8 * 2 * (2 if bidirectional else 1)
    x = torch.randn(3, 12, 10, dtype=torch.float64)
    lengths = torch.tensor([12, 5, 9])
    batched = model(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(x[i : i + 1, :n])
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-10, rtol=0)


def test_an_option_has_one_class():
    """Classes register themselves by name: a second class claiming a model's name is refused, the first stays."""
    from lstm_train.models import MODELS, Model
    from lstm_train.models.classifier import Classifier, ClassifierConfig

    with pytest.raises(TypeError, match=r"^model 'classifier' is defined twice: lstm_train\.models\.classifier"):

        class Other(Model):
            name = "classifier"
            kind = "classification"
            Config = ClassifierConfig

    assert MODELS["classifier"] is Classifier
