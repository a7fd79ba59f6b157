"""Warmup + cosine, and the scheduler wrapper's intervals and plateau mode."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from lstm_train.config import ConfigError
from lstm_train.training.optim import Scheduler, WarmupCosineLR, build_optimizer


def sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_then_cosine_to_the_floor():
    opt = sgd()
    sched = WarmupCosineLR(opt, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(111):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_state_dict_resumes_exactly_and_loads_weights_only():
    opt = sgd()
    sched = WarmupCosineLR(opt, total_steps=50, warmup_steps=5)
    for _ in range(17):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    opt2 = sgd()
    sched2 = WarmupCosineLR(opt2, total_steps=50, warmup_steps=5)
    sched2.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(10):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_scheduler_steps_on_its_interval_only(compose_cfg):
    opt = sgd()
    s = Scheduler(compose_cfg("scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5").scheduler, opt, {})
    opt.step()
    s.step("step")
    s.step("eval", 0.3)
    assert opt.param_groups[0]["lr"] == 1.0
    s.step("epoch")
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize(("mode", "values", "cut"), [
    ("max", [0.9, 0.95], False), ("max", [0.9, 0.8], True), ("min", [0.9, 0.8], False),
], ids=["max-better", "max-worse", "min-better"])
def test_plateau_follows_the_monitor_direction(compose_cfg, mode, values, cut):
    cfg = compose_cfg("scheduler=plateau", "scheduler.patience=0").scheduler
    opt = sgd()
    s = Scheduler(cfg, opt, {}, mode=mode)
    for v in values:
        s.step("eval", v)
    assert (opt.param_groups[0]["lr"] < 1.0) == cut


def test_cosine_spans_the_whole_run_by_default(compose_cfg):
    opt = sgd()
    s = Scheduler(compose_cfg("scheduler=cosine").scheduler, opt, {"step": 1234, "epoch": 3, "eval": 3})
    assert s.scheduler.total_steps == 1234


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim._target_=torch.optim.Nope"], "optim._target_: Error locating target 'torch.optim.Nope'"),
        (["+optim.foo=1"], "optim: Adam.__init__() got an unexpected keyword argument 'foo'"),
        (["scheduler._target_=foo.Bar"], "scheduler._target_: Error locating target 'foo.Bar'"),
    ],
)
def test_bad_targets_and_arguments_are_config_errors(compose_cfg, overrides, expected):
    cfg = compose_cfg(*overrides)
    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ConfigError) as info:
        Scheduler(cfg.scheduler, build_optimizer(cfg.optim, params), {"step": 10})
    assert str(info.value) == expected
