"""The moving average of the weights (trainer.ema_decay)."""

from __future__ import annotations

import torch
from torch import nn

from lstm_train.training.averaging import WeightAverage


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))  # weights and buffers


def test_the_first_update_copies_then_each_moves_a_share_of_the_way():
    trained = model()
    average = WeightAverage(trained, decay=0.75)
    assert not any(p.requires_grad for p in average.model.parameters())
    with torch.no_grad():
        trained[0].weight.fill_(1.0)
    average.update(trained)
    assert torch.equal(average.model[0].weight, trained[0].weight)
    with torch.no_grad():
        trained[0].weight.fill_(3.0)
        trained[1].running_mean.fill_(5.0)
    average.update(trained)
    torch.testing.assert_close(average.model[0].weight, torch.full((2, 3), 0.75 * 1.0 + 0.25 * 3.0))
    assert torch.equal(average.model[1].running_mean, trained[1].running_mean)  # buffers are copied
    assert average.updates == 2
    assert trained[0].weight.eq(3.0).all()  # the trained weights are untouched


def test_the_state_round_trips_and_a_new_average_starts_at_the_trained_weights():
    trained = model()
    average = WeightAverage(trained, decay=0.5)
    with torch.no_grad():
        trained[0].bias.fill_(2.0)
    average.update(trained)
    again = WeightAverage(model(), decay=0.5)
    again.load_state_dict(average.state_dict())
    assert again.updates == 1 and torch.equal(again.model[0].bias, trained[0].bias)
    fresh = WeightAverage(model(), decay=0.5)
    fresh.start_from(trained)
    assert torch.equal(fresh.model[0].bias, trained[0].bias) and fresh.updates == 0
