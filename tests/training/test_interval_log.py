"""The interval log: train/loss and train/clipped as means since the last log, the logged step's gradient norms
and rate, and its state in a checkpoint."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from lstm_train.config import CONF_DIR
from lstm_train.tasks import build_task
from lstm_train.training.interval_log import IntervalLog


class Recorder:
    """Stands in for the Tracker and the progress bar."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []
        self.postfix: dict = {}

    def scalars(self, values: dict, step: int) -> None:
        self.logged.append((dict(values), step))

    def set_postfix(self, refresh: bool = True, **values: str) -> None:
        self.postfix = values


@pytest.fixture(scope="module")
def task():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return build_task(compose("config", overrides=["debug=fast"]).task)


def params() -> list[tuple[str, nn.Parameter]]:
    weight, bias = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    weight.grad, bias.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    return [("w", weight), ("b", bias), ("frozen", nn.Parameter(torch.zeros(1)))]  # the last has no grad


def test_a_log_writes_the_means_since_the_last_and_starts_a_new_interval(task):
    log, out = IntervalLog(params(), task, torch.device("cpu")), Recorder()
    log.add(torch.tensor(1.0), torch.tensor(True), lr=0.1)
    log.take_norms()
    log.add(torch.tensor(3.0), torch.tensor(False), lr=0.05)
    log.write(out, out, step=2)
    (scalars, step), = out.logged
    assert step == 2 and scalars == {"train/loss": 2.0, "train/grad_norm": 13.0, "train/lr": 0.05,
                                     "train/clipped": 0.5, "grad_norm/w": 5.0, "grad_norm/b": 12.0}
    assert out.postfix == {"loss": "2.0000", "lr": "5.00e-02"}
    assert log.steps == 0 and log.loss_sum.item() == 0.0 and log.norms is None


def test_no_clipping_logs_none_clipped(task):
    log, out = IntervalLog(params(), task, torch.device("cpu")), Recorder()
    log.take_norms()
    log.add(torch.tensor(1.0), None, lr=0.1)
    log.write(out, out, step=1)
    assert out.logged[0][0]["train/clipped"] == 0.0


def test_a_loss_that_is_not_finite_stops_training(task):
    log = IntervalLog(params(), task, torch.device("cpu"))
    log.take_norms()
    log.add(torch.tensor(float("nan")), None, lr=0.1)
    with pytest.raises(FloatingPointError, match=r"^training diverged: train/loss is nan at step 7; try a lower "
                                                 r"optim.lr or trainer.clip_grad_norm$"):
        log.write(Recorder(), Recorder(), step=7)


def test_the_state_round_trips_with_the_train_metrics_and_the_rng(task):
    log = IntervalLog(params(), task, torch.device("cpu"))
    log.add(torch.tensor(2.5), torch.tensor(True), lr=0.1)
    batch = next(iter(task.train_batches(0, 4, 0)))
    output = torch.zeros(len(batch), 2)
    log.metrics.update(output, batch, torch.tensor(0.7))
    state = log.state_dict()
    expected = torch.rand(3)  # what the RNG draws next after the save
    again = IntervalLog(params(), task, torch.device("cpu"))
    again.load_state_dict(state, seed=0, step=1)
    assert torch.equal(torch.rand(3), expected)
    assert (again.loss_sum.item(), again.clipped.item(), again.steps) == (2.5, 1.0, 1)
    taken = again.take_metrics()
    assert taken == log.take_metrics() and taken["loss"] == pytest.approx(0.7)
    again.metrics.update(output, batch, torch.tensor(0.1))
    assert again.take_metrics()["loss"] == pytest.approx(0.1)  # taking them started the next evaluation's afresh
