"""The whole config: its root schema, the schemas of the groups optim, scheduler and trainer, validation, and
one-line config errors.

The schemas of models and tasks live beside their classes (lstm_train/models, lstm_train/tasks), registered
where they are defined (lstm_train/registry.py); this module imports both packages, so that every schema is in
Hydra's ConfigStore before a config is composed. What a schema is made of: lstm_train/schema.py.
:func:`validate` checks the values of a composed config before anything is built: each field's check, then
each group's cross-field :meth:`~lstm_train.schema.Schema.check`. Every failure is a :class:`ConfigError`
naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import math
import os
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException, UnsupportedInterpolationType

from lstm_train.errors import ConfigError
from lstm_train.models import MODELS, check_fits
from lstm_train.registry import Registry
from lstm_train.schema import (
    Schema,
    about,
    allows,
    check_fields,
    non_negative,
    not_a_choice,
    one_of,
    open_unit_interval,
    positive,
    probability,
    to_schema,
    unit_interval,
    unknown_key,
    value,
    with_suggestion,
)
from lstm_train.tasks import TASKS

# The configs: the repository's conf/, installed as the package lstm_train.conf (see pyproject.toml).
CONFIG_PACKAGE = "lstm_train.conf"
CONF_DIR = Path(str(importlib.resources.files(CONFIG_PACKAGE)))


def threads_per_job() -> int | None:
    """The default of trainer.num_threads (``${threads_per_job:}``): None (torch's own choice, all cores) in
    a single run and in a serial sweep; in a job that a launcher runs beside others, the launcher's
    ``cpus_per_task`` if it has one (SLURM), else 1, so that parallel jobs never fight over cores."""
    if not HydraConfig.initialized():  # compose() in tests and scripts: no launcher
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.launcher._target_.endswith(".BasicLauncher"):
        return None
    return hydra_cfg.launcher.get("cpus_per_task") or 1


def monitor_direction(monitor: str, mode: str, task: str) -> str:
    """Optuna's direction for trainer.monitor (``${monitor_direction:...}`` in conf/hydra/sweeper/):
    maximize or minimize, from trainer.monitor_mode or, with auto, the task's own ``higher_is_better``."""
    if mode == "auto":
        check_monitor(monitor, task)
        mode = "max" if TASKS[task].higher_is_better[monitor.removeprefix("val/")] else "min"
    return "maximize" if mode == "max" else "minimize"


def check_monitor(monitor: str, task: str) -> None:
    """A ConfigError unless ``task`` (a registered task's name) has the metric ``monitor`` (val/<metric>)."""
    known = list(TASKS[task].higher_is_better) if task in TASKS else []
    metric = monitor.removeprefix("val/")
    if metric not in known:  # compared without the val/ they all share, which would make any two look close
        raise ConfigError("trainer.monitor", with_suggestion(
            f"task {task} has no metric {monitor}", metric, known, "it has " + ", ".join(f"val/{m}" for m in known),
            lambda m: f"val/{m}"))


def config_help(_root_: DictConfig) -> str:
    """The composed config with each key's description (``${config_help:}`` in conf/config.yaml's
    hydra.help.template: what lstm-train --help prints); lstm_train/cli/describe.py writes it."""
    from lstm_train.cli import describe  # a later layer, needed by --help only

    # Hydra passes --resolve to its own $CONFIG only; its parser read the same sys.argv.
    return describe.config_help(_root_, resolve="--resolve" in sys.argv[1:])


def config_groups() -> str:
    """``${config_groups:}`` in hydra.help.template: the groups and their options, as --help lists them."""
    from lstm_train.cli import describe  # a later layer, needed by --help only

    return describe.config_groups()


for _name, _resolver in (("threads_per_job", threads_per_job), ("monitor_direction", monitor_direction),
                         ("config_help", config_help), ("config_groups", config_groups)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


DEVICES = ("auto", "cpu", "cuda", "mps")


@allows("auto, cpu, cuda, cuda:N or mps")
def _device(v: str) -> str | None:
    if v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit()):
        return None
    meant = "cuda" if v.lower() == "gpu" else v  # what CUDA devices are often called
    return not_a_choice(v, DEVICES, "must be auto, cpu, cuda, cuda:N or mps", meant)


@allows("val/<a metric of the task>")
def _monitor(v: str) -> str | None:
    return None if v.startswith("val/") else f"must name a validation metric such as val/acc; got {v!r}"


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)d)?(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")


def duration_seconds(text: str | float) -> float:
    """Seconds in a duration: a number of seconds, or days, hours, minutes and seconds (90, 90s, 30m, 1.5h, 1h30m)."""
    s = str(text).strip().lower()
    try:
        seconds = float(s)
    except ValueError:
        match = _DURATION.fullmatch(s)
        if not s or match is None:
            raise ValueError(f"must be a duration such as 90 (seconds), 90s, 30m, 1.5h or 1h30m; got {text!r}") \
                from None
        seconds = sum(float(n) * unit for n, unit in zip(match.groups(), (86400, 3600, 60, 1), strict=True) if n)
    if not 0 < seconds < math.inf:
        raise ValueError(f"must be a finite duration > 0; got {text!r}")
    return seconds


@allows("a duration: 90 (seconds), 90s, 30m, 1.5h, 1h30m, 2d")
def _duration(v: str) -> str | None:
    try:
        duration_seconds(v)
    except ValueError as e:
        return str(e)
    return None


@allows("[-2**63, 2**64 - 1]")
def _seed(v: int) -> str | None:
    # torch.manual_seed's range; past it, an overflow traceback
    if not -(2**63) <= v <= 2**64 - 1:
        return f"must be an integer in [-2**63, 2**64 - 1] (the range torch.manual_seed accepts), got {v}"
    return None


@allows("(0, 3.4e38]")
def _learning_rate(v: Any) -> str | None:
    # An lr past float32's range overflows inside the optimizer's update with a traceback, not a message.
    if not 0 < v <= 3.4e38:
        return f"must be > 0 and at most 3.4e38 (float32's range), got {v}"
    return None


@allows("[b1, b2], each in [0, 1)")
def _betas(v: Any) -> str | None:
    # torch.optim.Adam reads betas[0] and betas[1] (one beta: an IndexError traceback) and unpacks two each step
    betas = list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
    if isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, int | float) and 0 <= b < 1 for b in betas):
        return None
    return f"must be two decay rates [b1, b2], each in [0, 1), got {betas!r}; e.g. optim.betas=[0.9,0.999]"


# ---- optim/ (torch.optim classes, built by hydra.utils.instantiate with _partial_) -------------------
@dataclass
class OptimConfig(Schema):
    _target_: str = value(doc="The optimizer class (torch.optim.Adam, ...), built by Hydra's instantiate.")
    _partial_: bool = value(doc="true: built without its parameters, which the trainer passes.")
    lr: float = value(_learning_rate, doc="The learning rate, which a scheduler varies (cosine: its peak, after "
                      "warmup).")
    weight_decay: float = value(non_negative, doc="L2 penalty (AdamW: decoupled weight decay); 0: none.")


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = field(default=MISSING, metadata=about(
        "Decay rates [b1, b2] of the running means of the gradient and of its square.", _betas))
    eps: float = value(positive, doc="Added to the denominator for numerical stability.")
    amsgrad: bool = value(doc="Use the AMSGrad variant (the maximum of past squared-gradient averages).")


@dataclass
class AdamWConfig(AdamConfig):
    pass


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = value(non_negative, doc="Momentum factor; 0: plain SGD.")
    dampening: float = value(non_negative, doc="Dampening of the momentum (must be 0 with nesterov).")
    nesterov: bool = value(doc="Nesterov momentum (needs momentum > 0 and dampening 0).")

    def check(self) -> None:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError("optim.nesterov", "Nesterov momentum needs optim.momentum > 0 and optim.dampening = 0")


@dataclass
class RMSpropConfig(OptimConfig):
    alpha: float = value(unit_interval, doc="Smoothing constant of the running mean of the squared gradient.")
    eps: float = value(positive, doc="Added to the denominator for numerical stability.")
    momentum: float = value(non_negative, doc="Momentum factor; 0: none.")
    centered: bool = value(doc="Normalise by an estimate of the gradient's variance instead of its raw square.")


# ---- scheduler/ (built by lstm_train.training.optim.build_scheduler) ------------------------------------------
@dataclass
class SchedulerConfig(Schema):
    _target_: str | None = value(doc="The scheduler class, built by Hydra's instantiate; null: constant lr.")
    _partial_: bool = value(doc="true: built without its optimizer, which the trainer passes.")
    interval: str = value(one_of("step", "epoch", "eval"), doc="When the scheduler steps: step (each optimizer "
                          "step), epoch, or eval (each evaluation; plateau: with the monitored metric).")


@dataclass
class NoSchedulerConfig(SchedulerConfig):
    pass


@dataclass
class StepConfig(SchedulerConfig):
    step_size: int = value(positive, doc="Multiply the lr by gamma every step_size intervals (epochs, with "
                           "interval=epoch).")
    gamma: float = value(positive, doc="The factor the lr is multiplied by every step_size intervals.")


@dataclass
class CosineConfig(SchedulerConfig):
    warmup_steps: int = value(non_negative, doc="Intervals of linear warmup up to optim.lr; 0: none.")
    total_steps: int | None = value(positive, doc="Intervals until the decay ends; null: the whole run (its "
                                    "steps, epochs or evaluations, as interval counts).")
    min_lr_ratio: float = value(unit_interval, doc="The lr at the end of the decay, as a fraction of optim.lr.")


@dataclass
class PlateauConfig(SchedulerConfig):  # its mode (min or max) follows trainer.monitor
    factor: float = value(open_unit_interval, doc="Multiply the lr by this when trainer.monitor stops improving.")
    patience: int = value(non_negative, doc="Evaluations without improvement before the lr is cut.")
    threshold: float = value(non_negative, doc="The relative change of trainer.monitor that counts as improvement.")
    min_lr: float = value(non_negative, doc="The lr is never cut below this.")


# ---- trainer/ -----------------------------------------------------------------------------------------
@dataclass
class TrainerConfig(Schema):
    """trainer.*: what the Trainer and its parts read, as this dataclass (lstm_train.training.trainer.build_trainer
    types the group with to_schema); lstm_train/train.py reads the process's keys (device, threads, resume)."""

    seed: int = value(_seed, doc="Seeds model init, the training data's order or draws, and dropout.")
    max_epochs: int | None = value(positive, doc="Epochs to train; the run ends at max_epochs or max_steps, "
                                   "whichever comes first; null: no limit.")
    max_steps: int | None = value(positive, doc="Optimizer steps to train; the run ends at max_steps or max_epochs, "
                                  "whichever comes first; null: no limit.")
    max_time: str | None = value(_duration, doc="Wall-clock budget of training and evaluation, summed over "
                                 "resumes; null: none (docs/training.md#a-time-budget-trainermax_time).")
    batch_size: int = value(positive, doc="Training sequences per optimizer step (over all data-parallel "
                            "processes).")
    eval_batch_size: int = value(positive, doc="Sequences per batch in evaluation and test.")
    eval_every_n_steps: int | None = value(positive, doc="Evaluate on val every N steps; null: at the end of "
                                           "every epoch.")
    log_every_n_steps: int = value(positive, doc="Log the train/* and grad_norm/* scalars every N steps.")
    clip_grad_norm: float | None = value(non_negative, doc="Clip the gradients' total L2 norm to this; 0 or "
                                         "null: no clipping.")
    label_smoothing: float = value(probability, doc="e: the training loss is against (1 - e) one-hot + e "
                                   "uniform; val/test losses stay plain.")
    precision: str = value(one_of("fp32", "bf16"), doc="fp32, or bf16: bfloat16 autocast around forward and "
                           "loss; weights and optimizer state stay float32 "
                           "(docs/training.md#mixed-precision-bfloat16).")
    ema_decay: float | None = value(open_unit_interval, doc="d: val, test and best.pt use a moving average of the "
                                    "weights (~1/(1-d) steps); null: off (docs/training.md#weight-averaging-ema).")
    monitor: str = value(_monitor, doc="The val metric that picks best.pt and drives early stopping and "
                         "scheduler=plateau.")
    monitor_mode: str = value(one_of("auto", "min", "max"), doc="Whether lower or higher monitor is better; "
                              "auto: the metric's own direction (acc: max, loss: min).")
    early_stopping_patience: int | None = value(positive, doc="Stop after this many evaluations without "
                                                "improvement; null: never.")
    test_checkpoint: str = value(one_of("best", "last"), doc="Test with best.pt or with the last weights.")
    device: str = value(_device, doc="Where to train; auto: cuda if available, else cpu.")
    devices: int = value(positive, doc="Processes that train one model data-parallel, one per GPU on CUDA "
                         "(docs/scaling-out.md#data-parallel).")
    num_threads: int | None = value(positive, doc="CPU threads for torch ops; null: torch's default (all cores). "
                                    "The default is 1 in a job run beside others.")
    deterministic: bool = value(doc="torch.use_deterministic_algorithms (CPU runs are reproducible without it).")
    resume: str | None = value(doc="A checkpoint to continue (checkpoints/last.pt or best.pt), or a run dir: "
                               "its last.pt; auto: this run dir's last.pt if any; null: start afresh.")
    progress_bar: bool = value(doc="Show a tqdm progress bar (only ever on a terminal).")
    probe_every_n_steps: int | None = value(positive, doc="Log gate histograms, saturation and the gradient per "
                                            "time step every N steps; null: off.")
    probe_size: int = value(positive, doc="The probe runs on the first probe_size sequences of val, the same "
                            "all run long.")

    def check(self) -> None:
        if self.max_epochs is None and self.max_steps is None:
            raise ConfigError("trainer.max_steps", "set trainer.max_steps or trainer.max_epochs (both are null)")


# ---- the whole config ---------------------------------------------------------------------------------
@dataclass
class Config:
    name: str = value(doc="The run's name: part of its run dir's name.")
    # The groups: typed by the schema each option's YAML file pulls in (trainer has one schema).
    model: Any = field(default=MISSING, metadata=about("The network, a model for the task's kind of data."))
    task: Any = field(default=MISSING, metadata=about("The data, its loss and its metrics."))
    optim: Any = field(default=MISSING, metadata=about("The optimizer: a torch.optim class and its arguments."))
    scheduler: Any = field(default=MISSING, metadata=about("The learning-rate schedule."))
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata=about(
        "The training loop: its length, batches, evaluation, checkpoints and devices."))


# The options of the groups whose classes are torch's (models and tasks register their own).
SCHEMAS: dict[str, dict[str, type]] = {
    "optim": {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig, "rmsprop": RMSpropConfig},
    "scheduler": {"none": NoSchedulerConfig, "step": StepConfig, "cosine": CosineConfig, "plateau": PlateauConfig},
}
REGISTRIES: dict[str, Registry] = {"model": MODELS, "task": TASKS}


def options() -> dict[str, dict[str, type]]:
    """Every option's schema, by group: what conf/<group>/<option>.yaml pulls in."""
    return {**{g: {n: cls.Config for n, cls in r.items()} for g, r in REGISTRIES.items()}, **SCHEMAS}


def group_keys() -> list[str]:
    """The keys of every group's options, dotted (trainer.max_steps): a key given without its group is one of them."""
    schemas = {**{group: list(by_name.values()) for group, by_name in options().items()}, "trainer": [TrainerConfig]}
    return list(dict.fromkeys(f"{group}.{f.name}" for group, classes in schemas.items() for schema in classes
                              for f in dataclasses.fields(schema)))


def _register() -> None:
    # Top-level names, not a group: Hydra would list a schema group among the options in --help.
    cs = ConfigStore.instance()
    cs.store(name="schema_config", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            cs.store(name=f"schema_{group}_{name}", node=schema)


_register()


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first interpolation that does not resolve, missing or impossible value:
    each field's check, the model's kind against the task's, then each group's check across its fields."""
    check_interpolations(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "missing value (every key needs a value; see conf/)")
    check_fields(cfg, "", group_keys())
    typed = {group: typed_group(cfg, group) for group in ("trainer", "optim", "scheduler", "model", "task")}
    check_fits(MODELS.option(cfg.model), TASKS.option(cfg.task))  # before what the two groups' values say
    for schema in typed.values():
        if schema is not None:
            schema.check()
    if cfg.task.name in TASKS:  # after typed_group: a task from outside the package is registered by now
        check_monitor(cfg.trainer.monitor, cfg.task.name)
    check_memory(cfg, typed["task"].batch_length() if typed["task"] is not None else None)


def check_interpolations(cfg: DictConfig, keys: Collection[str] | None = None) -> None:
    """A ConfigError naming the first key whose ``${...}`` does not resolve (a key or a resolver that is not there,
    a value of the wrong type): found now, not by whatever reads the key once the run has started. Only those of
    ``keys`` of ``cfg`` if given."""
    try:
        for key in cfg if keys is None else keys:
            if isinstance(value := cfg[key], DictConfig | ListConfig):  # cfg[key] resolves a leaf
                OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as e:
        message = str(getattr(e, "msg", "") or e).splitlines()[0]
        if isinstance(e, InterpolationKeyError):
            fix = "an interpolation must name a key of the config (lstm-train --cfg job shows them)"
        elif isinstance(e, UnsupportedInterpolationType):
            fix = "no resolver has that name: ${key} names a key, ${oc.env:VAR} an environment variable"
        else:
            fix = "give a value, or an interpolation that resolves to one of the key's type"
        raise ConfigError(str(getattr(e, "full_key", "") or "config"), f"{message}; {fix}") from None


# ---- sizes that cannot fit --------------------------------------------------------------------------------
GATE_BLOCKS = {"lstm": 4, "gru": 3, "rnn": 1}  # weight blocks per cell (model.cell)


def check_memory(cfg: DictConfig, batch_length: int | None) -> None:
    """Refuse a model or a batch that cannot fit before anything is allocated (a huge size otherwise ends in
    an allocation traceback, or the OS killing the process). The estimate is a lower bound, so it refuses only
    what cannot work: the recurrent weights alone (no embedding or output layer) as float32 weights, gradients
    and optimizer state; the gate activations one training batch of ``batch_length`` steps keeps for the
    backward pass. Against the memory the device has (the machine's RAM, or the GPU's), not what is free at the
    moment: a lower bound above that cannot work however the machine is loaded (a data-parallel worker validates
    while its siblings allocate)."""
    m, t = cfg.model, cfg.trainer
    memory, where = memory_size(t.device)
    if memory is None:
        return
    gates, directions = GATE_BLOCKS.get(m.cell, 1), 2 if m.bidirectional else 1
    inputs = cfg.task.get("input_size") or m.embedding_dim  # features, else tokens through an embedding
    params = recurrent_weights(m, inputs)
    copies = 2 + optimizer_states(cfg.optim) + (t.ema_decay is not None)  # weights, gradients, state, average
    # Data-parallel processes each hold the model and a share of the global batch: on the CPU all in one RAM,
    # on CUDA one per GPU.
    share = 1 if where is None else t.devices
    weights = params * 4 * copies * t.devices // share
    activations = 0
    if batch_length is not None:
        gate_values = t.batch_size * batch_length * m.num_layers * directions * gates * m.hidden_size
        activations = gate_values * (2 if t.precision == "bf16" else 4) // share
    if weights + activations <= memory:
        return
    has = f"{where or 'this machine'} has {_bytes(memory)} of memory"
    # The key to blame: the largest of the sizes the estimate multiplies (a typo adds zeros to one of them).
    sizes = {"model.hidden_size": m.hidden_size, "model.num_layers": m.num_layers}
    if weights >= activations:
        sizes["task.input_size" if "input_size" in cfg.task else "model.embedding_dim"] = inputs
        key = max(sizes, key=sizes.get)
        raise ConfigError(key, f"{sizes[key]} is too large: training needs at least {_bytes(weights)} for a model of "
                          f"{params:.3g} recurrent weights ({copies} float32 copies: weights, gradients, optimizer "
                          f"state) and {has}; choose a smaller {key}")
    sizes.update({"task.seq_len": batch_length, "trainer.batch_size": t.batch_size})
    key, other = sorted(sizes, key=sizes.get, reverse=True)[:2]
    raise ConfigError(key, f"{sizes[key]} is too large: one training batch ({t.batch_size} sequences of {batch_length} "
                      f"steps through {m.num_layers} layers of {m.hidden_size} units) keeps at least "
                      f"{_bytes(activations)} of activations for the backward pass and {has}; choose a smaller {key} "
                      f"(or {other})")


def recurrent_weights(model: DictConfig, inputs: int) -> int:
    """The weights of the recurrent stack alone (torch.nn.LSTM's layout: two biases) of a model config on
    ``inputs`` features per step: a lower bound of the model's parameters."""
    gates, directions, h = GATE_BLOCKS.get(model.cell, 1), 2 if model.bidirectional else 1, model.hidden_size
    return directions * gates * h * (inputs + h + 2 + (model.num_layers - 1) * ((directions + 1) * h + 2))


def optimizer_states(optim: DictConfig) -> int:
    """Tensors the optimizer keeps per parameter: Adam's two moments, RMSprop's mean square, a momentum buffer,
    RMSprop's centred mean."""
    name = str(optim.get("_target_") or "").rpartition(".")[2]
    return {"Adam": 2, "AdamW": 2, "RMSprop": 1}.get(name, 0) + bool(optim.get("momentum")) + \
        bool(optim.get("centered"))


def memory_size(device: str) -> tuple[int | None, str | None]:
    """The memory of ``device`` (trainer.device) in bytes, and where: a CUDA device's and its name, or the
    machine's RAM and None; (None, None) when unknown."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return None, None  # refused with its own message when the device is resolved
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return None, None
        return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}"
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), None
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
        return None, None


def _bytes(n: float) -> str:
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    power = min(int(math.log10(max(n, 1))) // 3, len(units) - 1)
    return f"{n / 1000 ** power:.3g} {units[power]}"


def typed_group(cfg: DictConfig, group: str) -> Schema | None:
    """A group of a composed config as its schema's instance; None for an untyped group (a config made from a
    checkpoint's plain dicts: validated when it was composed). A model or task whose YAML names its class with
    ``_target_`` (outside the package) is typed here, after its module is imported: its fields are checked now."""
    node = cfg[group]
    if group in REGISTRIES:
        schema = REGISTRIES[group].option(node).Config
        typed = to_schema(schema, node, group)
        if OmegaConf.get_type(node) is not schema:
            check_fields(OmegaConf.structured(typed), f"{group}.")
        return typed
    return OmegaConf.to_object(node) if dataclasses.is_dataclass(OmegaConf.get_type(node)) else None


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts and lists: what checkpoints, HParams and data-parallel workers get.

    Values are kept as the run used them: a data file named ``a${b}.txt`` is that name. Whoever rebuilds an
    OmegaConf config from it (the tools, a data-parallel worker) escapes it first
    (:func:`lstm_train.schema.escaped`), or OmegaConf would read the ``${`` as an interpolation."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def describe_config_error(error: BaseException) -> str | None:
    """One line naming the key for a config mistake found by Hydra, OmegaConf or us; None for other errors."""
    cause: BaseException | None = error
    while cause is not None:  # ours, also when raised by a resolver (Optuna's direction) inside Hydra's errors
        if isinstance(cause, ConfigError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        known = sorted(error.options)
        return _plugin_hint(f"{group}={option}: " + with_suggestion(
            "no such option", option, known, f"choose one of {', '.join(known)}", lambda o: f"{group}={o}"))
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = str(getattr(cause, "msg", "") or cause).splitlines()[0]
        schema = getattr(cause, "object_type", None)
        if message.startswith("Key ") and " not in " in message and dataclasses.is_dataclass(schema):
            message = unknown_key(cause.full_key, (f.name for f in dataclasses.fields(schema)),
                                  group_keys() if schema is Config else ())
        elif any(t in message for t in (" could not be converted to ", "Invalid value assigned", "not a valid bool")) \
                and dataclasses.is_dataclass(schema):
            message = _field_check(schema, cause.key, cause.value) or _with_example(message, cause.full_key)
        return f"{cause.full_key}: {message}"
    if isinstance(error, HydraException | OmegaConfBaseException):
        return _plugin_hint(str(error).splitlines()[0])
    return None


# OmegaConf's name of a type in "could not be converted to Integer": the type in words, and its Python type
TYPE_WORDS = {"Integer": ("an integer", int), "Float": ("a number", float), "Boolean": ("true or false", bool)}


def _with_example(message: str, key: str) -> str:
    """A wrong type's message with what to give instead: the type in words, and a value that conf/ gives the key
    (the group's default option's first) as an example."""
    name = "Boolean" if " is not a valid bool " in message else message.rpartition(" converted to ")[2]
    word, kind = TYPE_WORDS.get(name, (None, None))
    if word is None:
        return message
    example = _example(key, kind)
    return f"{message}; give {word}" + (f", e.g. {key}={example}" if example is not None else "")


def _example(key: str, kind: type) -> str | None:
    """A value of type ``kind`` that a YAML file of ``key``'s group gives it, the default option's first."""
    group, _, rest = key.partition(".")
    if not rest or not (CONF_DIR / group).is_dir():
        return None
    chosen = next((d[group] for d in OmegaConf.load(CONF_DIR / "config.yaml").defaults
                   if isinstance(d, DictConfig) and group in d), None)
    for path in sorted((CONF_DIR / group).glob("*.yaml"), key=lambda p: (p.stem != chosen, p.stem)):
        value = OmegaConf.select(OmegaConf.load(path), rest, default=None, throw_on_resolution_failure=False)
        if type(value) in {int: (int,), float: (int, float), bool: (bool,)}[kind]:
            return str(value).lower() if kind is bool else str(value)
    return None


def _field_check(schema: type, key: Any, value: Any) -> str | None:
    """What a field's own check says of a value of the wrong type, when it says what the value must be:
    trainer.seed=1e23 gets the range of seeds, not only that a float is not an integer."""
    field_ = next((f for f in dataclasses.fields(schema) if f.name == key), None)
    check = field_.metadata.get("check") if field_ is not None else None
    try:
        return check(value) if check is not None else None
    except TypeError:  # a string where a number goes: the type error says it best
        return None


SWEEP_EXTRA = ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher", "optuna")


def _plugin_hint(message: str) -> str:
    """A launcher or sweeper that is not there: Hydra's plugins come with an extra, which may be missing."""
    about_plugins = "hydra/launcher" in message or "hydra/sweeper" in message
    if about_plugins and not all(importlib.util.find_spec(name) for name in SWEEP_EXTRA):
        return f"{message.rstrip('.')}; Hydra's launcher and sweeper plugins come with the sweep extra: " \
               "pip install -e '.[sweep]'"
    return message


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, item in tree.items():
        if isinstance(item, Mapping):
            flat.update(flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat
