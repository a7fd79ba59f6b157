"""Every config composes and validates; every bad value is a one-line ConfigError naming its key."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lstm_train import config
from lstm_train.config import (
    CONF_DIR,
    ConfigError,
    describe_config_error,
    duration_seconds,
    options,
    recurrent_weights,
    to_container,
    validate,
)
from lstm_train.models import MODELS, build_model, count_parameters
from lstm_train.runs.checkpoint import load_checkpoint
from lstm_train.runs.trained import load_trained
from lstm_train.schema import allowed, closest, doc, escaped
from lstm_train.tasks import TASKS, build_task
from lstm_train.train import train
from lstm_train.training.optim import optimizer_state_keys
from lstm_train.training.trainer import build_trainer

CONF = CONF_DIR


def yaml_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_option_has_a_schema_and_the_reverse():
    for group, schemas in options().items():
        assert yaml_options(group) == sorted(schemas), group
    assert sorted(MODELS) == yaml_options("model")


def schemas() -> dict[str, type]:
    """Every schema of ours, by a name for the failure message: the root's, each option's, and any schema
    a field of one of them is typed with (trainer's)."""
    found = {"Config": config.Config}
    found.update({f"{g}={o}": s for g, opts in options().items() for o, s in opts.items()})
    todo = list(found.values())
    while todo:
        schema = todo.pop()
        for hint in typing.get_type_hints(schema).values():
            for nested in (hint, *typing.get_args(hint)):  # TrainerConfig, and in Sub | None or list[Sub]
                if dataclasses.is_dataclass(nested) and nested not in found.values():
                    found[nested.__name__] = nested
                    todo.append(nested)
    return found


@pytest.mark.parametrize("name, schema", list(schemas().items()), ids=list(schemas()))
def test_every_key_has_a_one_line_description(name, schema):
    for f in dataclasses.fields(schema):
        text = doc(f)
        assert text.strip(), f"{name}: {f.name} has no description: value(..., doc=...)"
        assert "\n" not in text and text == text.strip(), f"{name}: {f.name}'s description is not one line"
        check = f.metadata.get("check")
        assert check is None or allowed(check), f"{name}: {f.name}'s check says nothing of what it allows: @allows"


def test_the_schemas_walked_include_the_trainer_and_every_option():
    found = schemas()
    assert config.TrainerConfig in found.values()
    assert len(found) == 1 + sum(len(opts) for opts in options().values()) + 1


# The groups are independent but for model and task (a model serves one kind of task), so every model-task
# pair is composed (with and without each debug option), and every optimizer-scheduler pair once: all
# 4 x 4 pairs for every model-task pair would be 390 compositions at ~0.1-0.3 s each. An experiment picks its
# own options (a group option given with it on the command line wins over the experiment's choice, as Hydra
# does, so it is not combined with them here).
DEBUG = [[], *([f"debug={d}"] for d in yaml_options("debug"))]
COMBINATIONS = [
    [f"model={m}", f"task={t}", *extra]
    for m, t in itertools.product(yaml_options("model"), yaml_options("task"))
    for extra in DEBUG
] + [
    [f"optim={o}", f"scheduler={s}"] for o, s in itertools.product(yaml_options("optim"), yaml_options("scheduler"))
] + [
    [f"experiment={e}", *extra] for e in yaml_options("experiment") for extra in DEBUG
]


# Tasks whose data the user brings (conll: file paths; brown_pos: a corpus fetched by a script) cannot be
# built from their defaults; tests/tasks/test_tagging.py builds them from files it writes.
NEEDS_DATA = {"conll", "brown_pos"}


def test_compose_every_combination(compose_cfg, tmp_path):
    built, tasks = 0, {}
    for overrides in COMBINATIONS:
        cfg = compose_cfg(*overrides)
        if MODELS[cfg.model.name].kind != TASKS[cfg.task.name].kind:
            with pytest.raises(ConfigError, match=r"^model: model=\w+ is a .* does not fit task="):
                validate(cfg)  # from the classes, before any data is read
            continue
        if cfg.task.name == "conll":  # its files are null until the user names them
            with pytest.raises(ConfigError, match=r"^task.train: needs the path"):
                validate(cfg)
            continue
        validate(cfg)
        if cfg.task.name in NEEDS_DATA:
            continue
        key = OmegaConf.to_yaml(cfg.task)
        task_ = tasks[key] = tasks.get(key) or build_task(cfg.task)
        model_ = build_model(cfg.model, task_)
        # the memory estimate's weights are a lower bound of the model's (check_memory refuses only what cannot fit)
        assert recurrent_weights(cfg.model, task_.inputs.features or cfg.model.embedding_dim) \
            <= count_parameters(model_), overrides
        build_trainer(cfg, task_, model_, tmp_path, torch.device("cpu"))  # builds optimizer and scheduler
        built += 1
    assert built > 0


def test_run_dirs_are_under_the_working_directory_outputs(compose_cfg):
    cfg = compose_cfg(return_hydra_config=True)
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        path = Path(OmegaConf.select(cfg, key))
        assert not path.is_absolute() and path.parent.parent == Path("outputs"), key  # Hydra: relative to the cwd


def test_seed_experiment_is_the_seed_protocol(compose_cfg):
    cfg = compose_cfg("experiment=seed_first_last")
    validate(cfg)
    task = build_task(cfg.task)
    model = build_model(cfg.model, task)
    assert count_parameters(model) == 204_290
    assert (cfg.task.train_size, cfg.task.test_size, cfg.task.seq_len, cfg.task.input_size) == (5000, 1000, 30, 10)
    assert not cfg.task.fresh
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == 1e-3
    assert cfg.scheduler._target_.endswith("StepLR") and (cfg.scheduler.step_size, cfg.scheduler.gamma) == (20, 0.5)
    assert cfg.scheduler.interval == "epoch"
    assert (cfg.trainer.max_epochs, cfg.trainer.clip_grad_norm) == (100, 1.0)
    assert (cfg.model.hidden_size, cfg.model.num_layers) == (128, 2)


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("model.hidden_size=-3", "model.hidden_size", "must be > 0"),
        ("model.num_layers=0", "model.num_layers", "must be > 0"),
        ("model.dropout=1.0", "model.dropout", r"must be in \[0, 1\)"),
        ("model.dropout=-0.1", "model.dropout", r"must be in \[0, 1\)"),
        ("model.backend=cudnn", "model.backend", "must be one of fast, reference, torch"),
        ("task.seq_len=0", "task.seq_len", "must be > 0"),
        ("task.num_classes=1", "task.num_classes", "must be >= 2"),
        ("trainer.batch_size=-1", "trainer.batch_size", "must be > 0"),
        ("trainer.clip_grad_norm=-1", "trainer.clip_grad_norm", "must be >= 0"),
        ("trainer.ema_decay=1.0", "trainer.ema_decay", r"must be in \(0, 1\)"),
        ("trainer.max_time=1h30", "trainer.max_time", "must be a duration such as 90 \\(seconds\\), 90s, 30m"),
        ("trainer.max_time=0", "trainer.max_time", "must be a finite duration > 0; got '0'"),
        ("trainer.device=tpu", "trainer.device", "must be auto, cpu"),
        ("trainer.num_threads=0", "trainer.num_threads", "must be > 0"),
        ("trainer.monitor=acc", "trainer.monitor", "must name a validation metric"),
        ("optim.lr=0", "optim.lr", "must be > 0"),
        ("optim.betas=[0.9]", "optim.betas", r"must be two decay rates \[b1, b2\], each in \[0, 1\), got \[0.9\]; "
         r"e.g. optim.betas=\[0.9,0.999\]$"),  # torch.optim.Adam: an IndexError traceback
        ("optim.betas=[0.9,1.0]", "optim.betas", r"must be two decay rates .*, got \[0.9, 1.0\];"),
        ("optim.betas=[0.9,0.99,0.5]", "optim.betas", r"must be two decay rates .*, got \[0.9, 0.99, 0.5\];"),
        ("scheduler.interval=week", "scheduler.interval", "must be one of step, epoch, eval"),
        ("trainer.max_steps=null", "trainer.max_steps", "set trainer.max_steps or trainer.max_epochs"),
        ("+model.hidden=3", "model.hidden", "unknown key; did you mean model.hidden_size[?] The keys here are: "
         "name, backend, hidden_size"),
        ("+model.foo=3", "model.foo", "unknown key; the keys here are: name, backend, hidden_size"),
        ("+max_steps=3", "max_steps", "unknown key; did you mean trainer.max_steps[?] Keys of a group are set under "
         "it, as trainer.max_steps=VALUE$"),
        ("model.backend=fst", "model.backend", "got 'fst'; did you mean fast[?] Must be one of fast, reference, "
         "torch$"),
        ("trainer.precision=bf61", "trainer.precision", "got 'bf61'; did you mean bf16[?] Must be one of fp32, bf16$"),
        ("trainer.device=cpuu", "trainer.device", "got 'cpuu'; did you mean cpu[?] Must be auto, cpu, cuda"),
        ("trainer.device=gpu", "trainer.device", "got 'gpu'; did you mean cuda[?] Must be auto, cpu, cuda"),
        ("trainer.monitor=val/accuracy", "trainer.monitor",
         "task first_last has no metric val/accuracy; did you mean val/acc[?] It has val/loss, val/acc$"),
        ("trainer.monitor=val/f1", "trainer.monitor", "task first_last has no metric val/f1; it has val/loss, "
         "val/acc$"),
        ("trainer.seed=100000000000000000000000", "trainer.seed", r"must be an integer in \[-2\*\*63, 2\*\*64 - 1\] "
         r"\(the range torch.manual_seed accepts\), got 100000000000000000000000$"),
    ],
)
def test_bad_values_name_their_key(compose_cfg, override, key, message):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError, match=rf"^{key}: {message}") as info:
        validate(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("optim", "override"), [
    ("adam", "optim.betas=[0.9]"), ("adam", "optim.betas=[1.0,0.9]"), ("adamw", "optim.betas=[0.9,-0.1]"),
    ("adam", "optim.betas=[0.9,0.99,0.5]"), ("adam", "optim.eps=-1"), ("adamw", "optim.weight_decay=-1"),
    ("sgd", "optim.momentum=-0.5"), ("sgd", "optim.lr=-1"), ("rmsprop", "optim.alpha=-0.1"),
    ("rmsprop", "optim.eps=-1e-8"), ("rmsprop", "optim.momentum=-1"),
])
def test_what_an_optimizer_refuses_is_refused_with_the_config(compose_cfg, optim, override):
    cfg = compose_cfg(f"optim={optim}", override)
    with pytest.raises((ValueError, IndexError)):  # torch's refusal or its crash, once the run dir is made
        optimizer_state_keys(cfg.optim)
    with pytest.raises(ConfigError, match=rf"^{override.partition('=')[0]}: "):
        validate(cfg)  # before it is


@pytest.mark.parametrize(("override", "message"), [
    ("model.hidden_size=${oops}", "model.hidden_size: Interpolation key 'oops' not found; an interpolation must name a "
     "key of the config"),
    ("optim.betas=[${oops},0.9]", "optim.betas[0]: Interpolation key 'oops' not found"),
    ("name=${nope:1}", "name: Unsupported interpolation type nope; no resolver has that name"),
    ("name=${oc.env:LSTM_TRAIN_NOT_SET}", "name: KeyError raised while resolving interpolation"),
    ("model.hidden_size=${name}", "model.hidden_size: While dereferencing interpolation '${name}': Value "
     "'first_last-classifier' of type 'str' could not be converted to Integer; give a value"),
])
def test_an_interpolation_that_does_not_resolve_names_its_key(compose_cfg, override, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(override))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), (90, 90), ("2.5", 2.5), ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("1h30m", 5400),
     ("2d12h", 216000), (" 1H5M10S ", 3910)],
)
def test_durations(text, seconds):
    assert duration_seconds(text) == seconds


def test_an_unknown_fast_path_setting_is_refused_before_the_run(compose_cfg, monkeypatch):
    monkeypatch.setenv("LSTM_TRAIN_FAST_PATH", "cuda")
    with pytest.raises(ConfigError, match=r"^model.backend=fast: LSTM_TRAIN_FAST_PATH=cuda is not one of auto, "
                       r"compiled, pytorch; unset it to let the LSTM choose \(auto\)$"):
        validate(compose_cfg())
    validate(compose_cfg("model.backend=reference"))  # read by the fast backend only


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=tagger"], "model: model=tagger is a tagging model and does not fit task=first_last, a classification "
     "task; use model=classifier"),
    (["model=char"], "model: model=char is a language model and does not fit task=first_last, a classification task; "
     "use model=classifier"),
    (["task=text_char"], "model: model=classifier is a classification model and does not fit task=text_char, a "
     "language model task; use model=char"),
])
def test_model_that_does_not_fit_the_task(compose_cfg, overrides, message):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)  # from the classes' kinds, before any data is read
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        build_model(cfg.model, build_task(cfg.task))
    assert str(info.value) == message


def test_monitor_must_be_a_metric_of_the_task(compose_cfg, tmp_path):
    cfg = compose_cfg("debug=fast", "trainer.monitor=val/f1")
    message = r"^trainer\.monitor: task first_last has no metric val/f1; it has val/loss"
    with pytest.raises(ConfigError, match=message):
        validate(cfg)  # before any data is read
    task = build_task(cfg.task)
    with pytest.raises(ConfigError, match=message):
        build_trainer(cfg, task, build_model(cfg.model, task), tmp_path, torch.device("cpu"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.hidden_size=abc"], "model.hidden_size: Value 'abc' of type 'str' could not be converted to Integer"),
        (["model.hiden_size=3"], "model.hiden_size: unknown key; did you mean model.hidden_size? The keys here "
         "are: name, backend, hidden_size"),
        (["trainer.max_step=3"], "trainer.max_step: unknown key; did you mean trainer.max_steps? The keys here are: "
         "seed, max_epochs"),
        (["trainer.max=3"], "trainer.max: unknown key; did you mean trainer.max_epochs, trainer.max_steps or "
         "trainer.max_time? The keys here are: seed, max_epochs"),
        (["trainr.max_steps=3"], "trainr: unknown key; did you mean trainer? The keys here are: name, model, task"),
        (["trainer.lr=3"], "trainer.lr: unknown key; the keys here are: seed, max_epochs"),
        (["max_steps=10"], "max_steps: unknown key; did you mean trainer.max_steps? Keys of a group are set under "
         "it, as trainer.max_steps=VALUE"),  # a group's key at the top: its group, not the top-level keys
        (["lr=0.1"], "lr: unknown key; did you mean optim.lr? Keys of a group are set under it, as optim.lr=VALUE"),
        (["max_step=3"], "max_step: unknown key; did you mean trainer.max_steps? Keys of a group"),
        (["trainr=3"], "trainr: unknown key; did you mean trainer? The keys here are: name, model, task"),
        (["model=nope"], "model=nope: no such option; choose one of char, classifier, seq2seq, tagger"),
        (["model=clasifier"], "model=clasifier: no such option; did you mean model=classifier? Choose one of char, "
         "classifier, seq2seq, tagger"),
        (["optim=adm"], "optim=adm: no such option; did you mean optim=adam? Choose one of adam, adamw, rmsprop, "
         "sgd"),
        (["optim.lr=fast"], "optim.lr: Value 'fast' of type 'str' could not be converted to Float; give a number, "
         "e.g. optim.lr="),  # a value conf/ gives it
        (["model.hidden_size=abc"], "model.hidden_size: Value 'abc' of type 'str' could not be converted to Integer; "
         "give an integer, e.g. model.hidden_size=64"),
        (["model.bidirectional=maybe"], "model.bidirectional: Value 'maybe' is not a valid bool (type str); give true "
         "or false, e.g. model.bidirectional=false"),
        (["optim.betas=0.9"], "optim.betas: must be two decay rates [b1, b2], each in [0, 1), got 0.9; e.g. "
         "optim.betas=[0.9,0.999]"),  # the field's own check, not OmegaConf's "float is not a ListConfig"
        (["trainer.seed=1e23"], "trainer.seed: must be an integer in [-2**63, 2**64 - 1] (the range torch.manual_seed "
         "accepts), got 1e+23"),  # the field's own check, which says more than that a float is not an int
        (["trainer.seed=1.5"], "trainer.seed: Value '1.5' of type 'float' could not be converted to Integer"),
    ],
)
def test_composition_errors_become_one_line(compose_cfg, overrides, expected):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(*overrides)
    message = describe_config_error(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


@pytest.mark.parametrize(("word", "choices", "expected"), [
    ("max_step", ["max_epochs", "max_steps", "max_time"], ["max_steps"]),  # only the closest, not all near ones
    ("epoch", ["seed", "max_epochs", "max_steps"], ["max_epochs"]),  # a part of the key
    ("accuracy", ["loss", "acc"], ["acc"]),  # spelt out
    ("tpu", ["auto", "cpu", "cuda", "mps"], []),  # another word one letter off, not a typo
    ("lr", ["seed", "max_steps"], []),
])
def test_closest_choices(word, choices, expected):
    assert closest(word, choices) == expected


# ---- sizes that cannot fit ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["model.hidden_size=1000000"], "model.hidden_size", "1000000 is too large: training needs at least 192 TB for "
     "a model of 1.2e[+]13 recurrent weights [(]4 float32 copies: weights, gradients, optimizer state[)] and this "
     "machine has 10 GB of memory; choose a smaller model.hidden_size$"),
    (["task.seq_len=100000000"], "task.seq_len", "100000000 is too large: one training batch [(]128 sequences of "
     "100000000 steps through 2 layers of 64 units[)] keeps at least 26.2 TB of activations for the backward pass and "
     "this machine has 10 GB of memory; choose a smaller task.seq_len [(]or trainer.batch_size[)]$"),
    (["trainer.batch_size=10000000"], "trainer.batch_size", "10000000 is too large: one training batch"),
    (["model.num_layers=10000000"], "model.num_layers", "10000000 is too large: one training batch"),
    (["task.input_size=1000000000"], "task.input_size", "1000000000 is too large: training needs at least"),
    (["model=char", "task=text_char", "model.embedding_dim=1000000000"], "model.embedding_dim",
     "1000000000 is too large: training needs at least"),
    # each of the 2 processes on the CPU holds a copy: 2 x 4.32e8 weights x 4 bytes x 4 copies (one fits)
    (["model.hidden_size=6000", "trainer.devices=2"], "model.hidden_size", "6000 is too large: training needs at "
     "least 13.8 GB for a model of 4.32e[+]08"),
    (["model.hidden_size=20000", "optim=sgd", "optim.momentum=0", "optim.nesterov=false"], "model.hidden_size",
     "20000 is too large: training needs at least 38.4 GB .* [(]2 float32 copies"),  # plain SGD keeps no state
])
def test_sizes_that_cannot_fit_are_refused_before_anything_is_built(compose_cfg, monkeypatch, overrides, key, message):
    monkeypatch.setattr(config, "memory_size", lambda device: (10**10, None))
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError, match=rf"^{key}: {message}"):
        validate(cfg)


def test_sizes_that_fit_pass(compose_cfg, monkeypatch):
    monkeypatch.setattr(config, "memory_size", lambda device: (10**10, None))
    validate(compose_cfg("model.hidden_size=6000"))  # 4.32e8 weights: 6.9 GB
    validate(compose_cfg("task.seq_len=10000"))  # 2.6 GB of activations
    monkeypatch.setattr(config, "memory_size", lambda device: (None, None))  # unknown: no estimate
    validate(compose_cfg("model.hidden_size=1000000"))


def test_a_cuda_device_is_measured_against_its_own_memory(compose_cfg, monkeypatch):
    monkeypatch.setattr(config, "memory_size", lambda device: (16 * 10**9, "cuda:0"))
    with pytest.raises(ConfigError, match=r"^model.hidden_size: 50000 is too large: .* and cuda:0 has 16 GB of memory"):
        validate(compose_cfg("model.hidden_size=50000"))


# ---- a literal ${ in a value (a file named so) ----------------------------------------------------------------
def test_a_data_path_with_a_dollar_brace_trains_and_its_checkpoint_loads(compose_cfg, tmp_path):
    """OmegaConf reads ${ as an interpolation: the checkpoint keeps the path as used, and the tools and a
    resume read the path back as it was."""
    text = tmp_path / "k${x}.txt"
    text.write_text("In the beginning God created the heaven and the earth.\n" * 40)
    written = str(text).replace("${", "\\${")  # as on the command line: task.path='...k\${x}.txt'
    cfg = compose_cfg("debug=fast", "task=text_char", "model=char", f"task.path={written}", "task.val_fraction=0.1",
                      "task.test_fraction=0.1", "task.sample_length=0", "trainer.max_steps=2")
    assert cfg.task.path == str(text)
    train(cfg, tmp_path / "run")
    loaded, _, _ = load_trained(tmp_path / "run/checkpoints/best.pt")
    assert loaded.task.path == str(text)
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["config"]["task"]["path"] == str(text)  # as used
    assert OmegaConf.create(escaped(to_container(cfg))) == cfg  # what data-parallel workers rebuild their config from


@pytest.mark.parametrize("text", ["a${x}b", "a\\${x}", "c:\\d\\${x}\\", "${a${b}}", "plain\\path", "$${x}", "x}${"])
def test_escaped_text_reads_back_as_it_was(text):
    assert OmegaConf.create(escaped({"p": [text]})).p[0] == text


def test_missing_yaml_value_is_reported(compose_cfg):
    cfg = compose_cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.model.hidden_size = "???"
    with pytest.raises(ConfigError, match=r"^model\.hidden_size: missing value"):
        validate(cfg)
