"""Whole runs in a tmp dir: event tags, HParams, checkpoints, metrics.json, resume, early stopping."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.plugins.hparams import plugin_data_pb2

from lstm_train.cli.launch import resolve_device
from lstm_train.config import ConfigError
from lstm_train.models import build_model
from lstm_train.nn import compiled, extension
from lstm_train.runs.trained import load_trained
from lstm_train.tasks import build_task
from lstm_train.tasks.first_last import FirstLast
from lstm_train.train import train
from lstm_train.training import precision
from lstm_train.training.interrupt import Interrupted
from lstm_train.training.trainer import build_trainer
from tests.helpers import compose_config, events, without_time
from tests.training.callbacks import SignalInStep, StepClock, WeightsAfterEachStep

pytestmark = pytest.mark.usefixtures("one_thread")

PARAMS = [
    f"encoder.lstm.{kind}_l{layer}" for layer in (0, 1) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
] + ["head.weight", "head.bias"]


def test_short_run_writes_events_checkpoints_and_metrics(compose_cfg, tmp_path):
    cfg = compose_cfg("debug=fast", "trainer.log_every_n_steps=1")
    result = train(cfg, tmp_path)

    acc = events(tmp_path)
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/grad_norm", "train/lr", "train/clipped", "train/acc", "val/loss", "val/acc",
                "test/loss", "test/acc"} | {f"grad_norm/{p}" for p in PARAMS}
    assert expected == tags
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 17))  # 2 epochs of 256 / 32, logged every step
    assert [e.step for e in acc.Scalars("val/acc")] == [8, 16]
    assert all(e.value in (0.0, 1.0) for e in acc.Scalars("train/clipped"))
    # train/grad_norm is the total of the per-parameter norms, before clipping
    total = acc.Scalars("train/grad_norm")[0].value
    parts = torch.tensor([acc.Scalars(f"grad_norm/{p}")[0].value for p in PARAMS])
    assert total == pytest.approx(parts.norm().item(), rel=1e-5)

    hparams = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"val/loss", "val/acc", "test/loss", "test/acc"}
    session = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    recorded = session.session_start_info.hparams
    assert recorded["model.hidden_size"].number_value == 16
    assert recorded["optim._target_"].string_value == "torch.optim.Adam"
    assert recorded["num_params"].number_value == result["num_params"]

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert set(metrics["test"]) == set(metrics["val"]) == {"loss", "acc"}
    assert metrics["step"] == 16 and metrics["epoch"] == 2 and not metrics["stopped_early"]
    assert metrics["test"]["acc"] == acc.Scalars("test/acc")[0].value

    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "progress", "rng", "config", "task", "num_params"} <= set(state)
        assert state["config"]["model"]["hidden_size"] == 16 and isinstance(state["config"], dict)
        assert isinstance(state["rng"]["torch"], torch.Tensor)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["progress"]["step"] == 16 and last["scheduler"]["last_epoch"] == 16
    assert last["progress"]["best"]["step"] == metrics["best"]["step"]


@pytest.mark.parametrize(
    "overrides",
    [
        # the default recipe's parts: fresh data, warmup + cosine; a checkpoint in mid-epoch
        ["trainer.eval_every_n_steps=3"],
        # a fixed, reshuffled training set, dropout (global RNG), a per-epoch scheduler, best != last
        ["task.fresh=false", "model.dropout=0.3", "scheduler=step", "scheduler.step_size=1", "optim=sgd",
         "trainer.test_checkpoint=best"],
        # val, test and best.pt evaluate a moving average of the weights, which the checkpoint carries on
        ["trainer.eval_every_n_steps=3", "trainer.ema_decay=0.8"],
    ],
    ids=["fresh-cosine-midepoch", "fixed-dropout-step", "ema"],
)
def test_resume_ends_like_an_uninterrupted_run(compose_cfg, tmp_path, killed_after_first_checkpoint, overrides):
    cfg = compose_cfg("debug=fast", *overrides)
    uninterrupted = train(cfg, tmp_path / "a")

    # The same run, killed right after its first checkpoint...
    killed_after_first_checkpoint(cfg, tmp_path / "b")
    assert torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["progress"]["step"] < 16

    # ...and resumed, in a new run dir, from its last.pt.
    resumed_cfg = compose_cfg("debug=fast", *overrides, f"trainer.resume={tmp_path / 'b/checkpoints/last.pt'}")
    resumed = train(resumed_cfg, tmp_path / "c")
    assert without_time(resumed) == without_time(uninterrupted)
    a = events(tmp_path / "a").Scalars("train/loss")
    c = events(tmp_path / "c").Scalars("train/loss")
    assert [(e.step, e.value) for e in a if e.step >= c[0].step] == [(e.step, e.value) for e in c]


@pytest.mark.parametrize("overrides", [[], ["trainer.eval_every_n_steps=3"]], ids=["epoch-end", "mid-epoch"])
def test_the_log_metrics_json_and_a_resume_name_the_same_epoch(compose_cfg, tmp_path, killed_after_first_checkpoint,
                                                               caplog, overrides):
    """Epochs count from 1, as the log shows them: a run of trainer.max_epochs=2 ends at epoch 2."""
    def logged() -> dict[int, int]:  # step: epoch, of the log's evaluation lines
        lines = [re.match(r"epoch (\d+) step (\d+)/", r.getMessage()) for r in caplog.records]
        return {int(m[2]): int(m[1]) for m in lines if m}

    cfg = compose_cfg("debug=fast", *overrides)
    with caplog.at_level(logging.INFO, logger="lstm_train.training"):
        killed_after_first_checkpoint(cfg, tmp_path / "a")
        before = logged()
        caplog.clear()
        result = train(compose_cfg("debug=fast", *overrides, f"trainer.resume={tmp_path / 'a/checkpoints/last.pt'}"),
                       tmp_path / "b")
    resumed = re.search(r"resumed from .* at step (\d+) \(epoch (\d+)\)", caplog.text)
    assert (int(resumed[1]), int(resumed[2])) == max(before.items())
    after = logged()
    assert after[16] == result["epoch"] == 2 and result["step"] == 16
    assert result["best"]["epoch"] == {**before, **after}[result["best"]["step"]]


def test_a_run_whose_epochs_end_before_max_steps_says_so_once(compose_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lstm_train.training"):
        result = train(compose_cfg("debug=fast", "task.train_size=64", "trainer.max_steps=100"), tmp_path)
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trainer: ")]
    assert told == ["trainer: 2 epochs of 2 steps end the run at step 4, before trainer.max_steps=100 "
                    "(trainer.max_epochs=null to train to it)"] and result["step"] == 4


def test_early_stopping(compose_cfg, tmp_path):
    # An lr too small to move a float32 weight: the val loss never improves after the first evaluation.
    cfg = compose_cfg("debug=fast", "optim.lr=1e-12", "trainer.monitor=val/loss", "trainer.early_stopping_patience=1",
                      "trainer.eval_every_n_steps=2")
    result = train(cfg, tmp_path)
    assert result["stopped_early"] and result["step"] == 4 and result["best"]["step"] == 2


@pytest.mark.parametrize(("optim", "scheduler"), [("adamw", "none"), ("rmsprop", "plateau"), ("sgd", "cosine")],
                         ids=["adamw-none", "rmsprop-plateau", "sgd-cosine"])
def test_clipping_off_and_every_optimizer_trains(compose_cfg, tmp_path, optim, scheduler):
    cfg = compose_cfg("debug=fast", f"optim={optim}", f"scheduler={scheduler}", "trainer.clip_grad_norm=0",
                      "trainer.max_epochs=1")
    result = train(cfg, tmp_path)
    assert result["step"] == 8
    assert all(e.value == 0.0 for e in events(tmp_path).Scalars("train/clipped"))


def test_divergence_is_one_clear_error(compose_cfg, tmp_path, monkeypatch):
    loss = FirstLast.loss
    monkeypatch.setattr(FirstLast, "loss", lambda self, *args: loss(self, *args) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"^training diverged: train/loss is nan at step 2; try a lower"):
        train(compose_cfg("debug=fast"), tmp_path)


def test_label_smoothing_is_for_the_training_loss_only(compose_cfg, tmp_path, monkeypatch):
    loss, calls = FirstLast.loss, []

    def spy(self, output, batch, label_smoothing=0.0):
        calls.append((torch.is_grad_enabled(), label_smoothing))  # evaluation runs without autograd
        return loss(self, output, batch, label_smoothing)

    monkeypatch.setattr(FirstLast, "loss", spy)
    result = train(compose_cfg("debug=fast", "trainer.label_smoothing=0.2"), tmp_path)
    assert {c for c in calls if c[0]} == {(True, 0.2)} and len([c for c in calls if c[0]]) == result["step"]
    assert {c for c in calls if not c[0]} == {(False, 0.0)}


@pytest.fixture
def loss_without_label_smoothing(monkeypatch) -> None:
    """first_last's loss as a task's loss that predates trainer.label_smoothing: (output, batch) only."""
    loss = FirstLast.loss
    monkeypatch.setattr(FirstLast, "loss", lambda self, output, batch: loss(self, output, batch))


def test_a_loss_without_label_smoothing_trains_as_before(compose_cfg, tmp_path, loss_without_label_smoothing):
    assert train(compose_cfg("debug=fast"), tmp_path)["step"] == 16


def test_a_loss_without_label_smoothing_refuses_it(compose_cfg, tmp_path, loss_without_label_smoothing):
    with pytest.raises(ConfigError, match=r"^trainer.label_smoothing: task first_last's loss takes no label_smooth"):
        train(compose_cfg("debug=fast", "trainer.label_smoothing=0.1"), tmp_path)


def test_ema_evaluates_a_moving_average_of_the_weights_and_trains_the_same(compose_cfg, tmp_path, monkeypatch):
    plain = train(compose_cfg("debug=fast"), tmp_path / "plain")
    shown = []  # the weights of the model whose samples go to TensorBoard, at each evaluation
    samples = FirstLast.samples

    def spy(self, model):
        shown.append({k: v.clone() for k, v in model.state_dict().items()})
        return samples(self, model)

    monkeypatch.setattr(FirstLast, "samples", spy)
    cfg = compose_cfg("debug=fast", "trainer.ema_decay=0.7")
    after_each_step = WeightsAfterEachStep()
    result = train(cfg, tmp_path / "ema", callbacks=[after_each_step])
    trained = after_each_step.weights
    last, best = (torch.load(tmp_path / "ema/checkpoints" / n, weights_only=True) for n in ("last.pt", "best.pt"))
    # Training is untouched: the same weights and train loss as without the average.
    before = torch.load(tmp_path / "plain/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(last["model"][k], w) for k, w in before.items())
    assert result["train"] == plain["train"] and result["test"] != plain["test"]
    # The average starts at the first step's weights, then ema = 0.7 ema + 0.3 w after each step.
    expected = trained[0]
    for weights in trained[1:]:
        expected = {k: 0.7 * expected[k] + 0.3 * w for k, w in weights.items()}
    assert last["ema"]["updates"] == len(trained) == result["step"] == 16
    for k, v in expected.items():
        torch.testing.assert_close(last["ema"]["weights"][k], v, rtol=1e-5, atol=1e-6)
        assert torch.equal(shown[-1][k], last["ema"]["weights"][k])
    # The test measured best.pt's average: a model holding it, evaluated by a trainer without one, agrees.
    task = build_task(cfg.task)
    model = build_model(cfg.model, task)
    model.load_state_dict(best["ema"]["weights"])
    check = build_trainer(compose_cfg("debug=fast"), task, model, tmp_path / "check", torch.device("cpu"))
    assert check.evaluate("test").compute() == result["test"]
    # lstm-predict and the other tools load the weights the run evaluated
    _, _, loaded = load_trained(tmp_path / "ema/checkpoints/best.pt")
    assert all(torch.equal(v, best["ema"]["weights"][k]) for k, v in loaded.state_dict().items())


def test_ema_starts_when_a_run_without_one_resumes_with_it(compose_cfg, tmp_path, caplog):
    first = train(compose_cfg("debug=fast", "trainer.max_epochs=1", "trainer.test_checkpoint=last"), tmp_path / "a")
    last = tmp_path / "a/checkpoints/last.pt"
    assert torch.load(last, weights_only=True)["ema"] is None
    # with nothing left to train, the average is the weights as trained, not the model's initial ones
    again = train(compose_cfg("debug=fast", "trainer.max_epochs=1", "trainer.test_checkpoint=last",
                              "trainer.ema_decay=0.8", f"trainer.resume={last}"), tmp_path / "b")
    assert again["test"] == first["test"]
    with caplog.at_level(logging.WARNING, logger="lstm_train.training"):
        train(compose_cfg("debug=fast", "trainer.ema_decay=0.8", f"trainer.resume={last}"), tmp_path / "c")
    assert "holds no moving average of the weights: trainer.ema_decay starts one at step 8" in caplog.text
    assert torch.load(tmp_path / "c/checkpoints/last.pt", weights_only=True)["ema"]["updates"] == 8


@pytest.fixture(scope="module")
def out_of_time(tmp_path_factory) -> tuple[dict, Path]:
    """A run whose budget (5 s, on a clock of 1 s per step) is spent after step 5: its metrics and last.pt."""
    run = tmp_path_factory.mktemp("out-of-time")
    result = train(compose_config("debug=fast", "trainer.max_time=5s"), run, callbacks=[StepClock()])
    return result, run / "checkpoints" / "last.pt"


def test_max_time_ends_the_run_at_the_next_evaluated_step(out_of_time):
    result, last = out_of_time
    # spent after step 5, which was not evaluated: step 6 is, and ends the run (an epoch is 8 steps)
    assert result["step"] == 6 and result["max_time_reached"] and result["best"]["step"] == 6
    assert [e.step for e in events(last.parent.parent).Scalars("val/acc")] == [6]
    assert [e.step for e in events(last.parent.parent).Scalars("test/acc")] == [6]
    assert torch.load(last, weights_only=True)["progress"]["elapsed_s"] == 6.0


def test_max_time_spent_at_an_evaluated_step_ends_the_run_there(compose_cfg, tmp_path):
    # spent after the first epoch's end, an evaluated step: no extra step
    at_eval = train(compose_cfg("debug=fast", "trainer.max_time=8"), tmp_path, callbacks=[StepClock()])
    assert at_eval["step"] == 8 and at_eval["max_time_reached"]
    assert [e.step for e in events(tmp_path).Scalars("val/acc")] == [8]


def test_a_run_resumed_with_its_budget_spent_only_tests(compose_cfg, tmp_path, out_of_time):
    result, last = out_of_time
    again = train(compose_cfg("debug=fast", "trainer.max_time=5s", f"trainer.resume={last}"), tmp_path,
                  callbacks=[StepClock()])
    assert without_time(again) == without_time(result)
    assert not (tmp_path / "checkpoints/last.pt").exists()


def test_a_run_resumed_with_a_larger_budget_trains_on(compose_cfg, tmp_path, out_of_time):
    more = train(compose_cfg("debug=fast", "trainer.max_time=1h", f"trainer.resume={out_of_time[1]}"), tmp_path,
                 callbacks=[StepClock()])
    assert more["step"] == 16 and not more["max_time_reached"]


def test_max_time_owed_step_survives_an_interrupt(compose_cfg, tmp_path, out_of_time):
    clock = StepClock()
    # SIGTERM in step 5, the step after which the budget is spent and one evaluated step is owed
    with pytest.raises(Interrupted):
        train(compose_cfg("debug=fast", "trainer.max_time=5s"), tmp_path,
              callbacks=[clock, SignalInStep(5, signal.SIGTERM)])
    resumed = train(compose_cfg("debug=fast", "trainer.max_time=5s", "trainer.resume=auto"), tmp_path,
                    callbacks=[clock])
    assert without_time(resumed) == without_time(out_of_time[0]) and resumed["step"] == 6


def test_a_budget_spent_at_the_last_step_is_not_reported_as_reached(compose_cfg, tmp_path):
    # the step limit ended training, not the budget
    assert not train(compose_cfg("debug=fast", "trainer.max_time=16"), tmp_path, callbacks=[StepClock()])[
        "max_time_reached"]


def test_max_time_counts_the_time_before_a_resume(compose_cfg, tmp_path, killed_after_first_checkpoint):
    killed_after_first_checkpoint(compose_cfg("debug=fast", "trainer.max_time=1h"), tmp_path / "a")
    progress = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)["progress"]
    assert progress["step"] == 8 and 0 < progress["elapsed_s"] < 60
    # a budget the first part of the run has spent: the resumed run trains one step, evaluated (with a budget of
    # its own, it would train on to the step limit)
    last = tmp_path / "a/checkpoints/last.pt"
    resumed = train(compose_cfg("debug=fast", f"trainer.max_time={progress['elapsed_s']}", f"trainer.resume={last}"),
                    tmp_path / "b")
    assert resumed["step"] == 9 and resumed["max_time_reached"]
    assert progress["elapsed_s"] < resumed["time"]["elapsed_s"] < progress["elapsed_s"] + 30


@pytest.fixture
def autocast_seen(monkeypatch) -> dict[str, set]:
    """{"forward": ..., "loss": ...}: the (grad enabled, autocast dtype or None) of each call of first_last's."""
    forward, loss, seen = FirstLast.forward, FirstLast.loss, {"forward": set(), "loss": set()}

    def spy(name, original):
        def call(self, *args, **kwargs):
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen[name].add((torch.is_grad_enabled(), dtype))
            return original(self, *args, **kwargs)
        return call

    monkeypatch.setattr(FirstLast, "forward", spy("forward", forward))
    monkeypatch.setattr(FirstLast, "loss", spy("loss", loss))
    return seen


def test_bf16_precision_autocasts_forward_and_loss_in_training_and_evaluation(compose_cfg, tmp_path, monkeypatch,
                                                                               autocast_seen):
    seen = autocast_seen
    # the wiring is under test: a CPU that the trainer refuses for speed runs this tiny model anyway
    monkeypatch.setattr(precision, "bf16_products", lambda: True)
    kernel_calls = []
    layer = compiled.compiled_layer
    monkeypatch.setattr(compiled, "compiled_layer", lambda *a, **k: kernel_calls.append(a[8:]) or layer(*a, **k))
    result = train(compose_cfg("debug=fast", "trainer.precision=bf16"), tmp_path)
    # training (grad on) and evaluation (off) alike
    assert seen == {"forward": {(True, torch.bfloat16), (False, torch.bfloat16)},
                    "loss": {(True, torch.bfloat16), (False, torch.bfloat16)}}
    assert all(torch.isfinite(torch.tensor(v)) for v in result["test"].values())
    if extension.bf16_products() and extension._ops is not None:  # the kernel ran, with bfloat16 products
        assert kernel_calls and all(args == (compiled.bf16_products_here()[0],) for args in kernel_calls)


def test_fp32_precision_does_not_autocast(compose_cfg, tmp_path, autocast_seen):
    train(compose_cfg("debug=fast"), tmp_path)
    assert {s[1] for s in autocast_seen["forward"] | autocast_seen["loss"]} == {None}


def test_bf16_precision_is_refused_where_bfloat16_would_be_emulated(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "bf16_products", lambda: False)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    with pytest.raises(ConfigError, match=r"^trainer.precision: this CPU has no AVX512-BF16, so bfloat16 products "
                       r"would be emulated, far slower than float32: set trainer.precision=fp32$"):
        train(compose_cfg("debug=fast", "trainer.precision=bf16"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ConfigError, match=r"^trainer\.device: cuda requested but this torch sees no CUDA device"):
        resolve_device("cuda")


def test_metrics_json_is_written_atomically(compose_cfg, tmp_path, monkeypatch):
    renamed = []
    replace = os.replace

    def record(src, dst):
        renamed.append((str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    train(compose_cfg("debug=fast", "trainer.max_epochs=1"), tmp_path)
    # a temporary file beside it, renamed over it: a reader (lstm-sweep-summary) never sees half of it
    into = [src for src, dst in renamed if dst == str(tmp_path / "metrics.json")]
    assert len(into) == 1 and Path(into[0]).parent == tmp_path and into[0].endswith(".tmp")
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 8
