"""What every model is: an option of conf/model/ for one kind of task, built from its config by :func:`build_model`.

A model is a :class:`Model` subclass that sets ``name`` (its option), ``kind`` (the kind of task it serves) and
``Config`` (its schema, a :class:`ModelConfig`); it registers itself where it is defined. Its constructor takes
plain typed values (an :class:`~lstm_train.tasks.Inputs`, sizes, a :class:`~lstm_train.models.encoder.Stack`);
:meth:`Model.build` is the one place it reads its config.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from lstm_train.errors import ConfigError
from lstm_train.nn import BACKENDS, CELLS, PLAIN_CELL, VARIANTS, Chrono
from lstm_train.nn.compiled import fast_path
from lstm_train.registry import Registered, Registry
from lstm_train.schema import Schema, allows, at_least, one_of, positive, probability, to_schema, value
from lstm_train.tasks import KINDS, Task, TaskKind

from .encoder import Stack

MODELS = Registry("model")


@allows("a number, or chrono")
def _forget_bias(v: Any) -> str | None:
    if v == "chrono" or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
        return None
    return f"must be a number (the forget gate's bias at init) or chrono; got {v!r}"


@dataclass
class ModelConfig(Schema):
    """What every model's schema has: the recurrent stack, and the embedding for token inputs."""

    name: str = value(doc="The model's option name (model=NAME).")
    backend: str = value(one_of(*BACKENDS), doc="The LSTM: fast (ours, compiled kernel), reference (ours, step by "
                         "step) or torch (torch.nn.LSTM); LSTM cells only.")
    hidden_size: int = value(positive, doc="Units of each LSTM layer (per direction).")
    num_layers: int = value(positive, doc="Stacked recurrent layers.")
    dropout: float = value(probability, doc="Dropout between recurrent layers, as torch.nn.LSTM's (none after the "
                           "last).")
    bidirectional: bool = value(doc="Read each sequence both ways (not for a language model or a decoder).")
    # Any: OmegaConf 2.3 has no float | str
    forget_bias: Any = value(_forget_bias, doc="The forget gate's effective bias at init; chrono: Tallec & "  # noqa: RUF009
                             "Ollivier's chrono init (needs chrono_max_len).")
    chrono_max_len: int | None = value(at_least(2), doc="With forget_bias=chrono: the longest dependency to "
                                       "learn (T_max), e.g. ${task.seq_len}.")
    embedding_dim: int = value(positive, doc="Token embedding size (tasks whose inputs are tokens only).")
    cell: str = value(one_of(*CELLS), doc="lstm, or torch's gru / rnn baselines (GRU, tanh RNN; backend, variant "
                      "and the regularisers are for lstm).")
    # The variant keys default to the plain cell, so that a model YAML of your own written before them still works.
    variant: str = value(one_of(*VARIANTS), PLAIN_CELL["variant"], doc="The LSTM's cell, by Greff et al.'s names: "
                         "lstm is torch's, v adds peepholes, the others change v (docs/lstm/variants.md).")
    layer_norm: bool = value(default=PLAIN_CELL["layer_norm"], doc="Ba et al.'s layer-normalised LSTM.")
    zoneout_c: float = value(probability, PLAIN_CELL["zoneout_c"], doc="Zoneout of c (Krueger et al.): the chance "
                             "a unit keeps its previous value, per step, in training.")
    zoneout_h: float = value(probability, PLAIN_CELL["zoneout_h"], doc="Zoneout of h: as zoneout_c.")
    recurrent_dropout: float = value(probability, PLAIN_CELL["recurrent_dropout"], doc="Dropout on the h entering "
                                     "the recurrence, one mask per sequence (Gal & Ghahramani), in training.")
    weight_drop: float = value(probability, PLAIN_CELL["weight_drop"], doc="DropConnect on the recurrent weights "
                               "W_hh, one mask per forward call (AWD-LSTM), in training.")

    def check(self) -> None:
        self._check_variant()
        if self.backend == "fast":  # refused before the run starts, not at its first forward pass
            try:
                fast_path()
            except ValueError as e:
                raise ConfigError(f"model.backend={self.backend}", str(e)) from None
        if self.forget_bias == "chrono":
            if self.chrono_max_len is None:
                raise ConfigError("model.chrono_max_len", "model.forget_bias=chrono needs the longest dependency to "
                                  "learn, e.g. model.chrono_max_len=${task.seq_len}")
            if self.cell != "lstm":
                raise ConfigError("model.forget_bias", f"chrono initialises an LSTM's gates; model.cell={self.cell} "
                                  "keeps torch's own init: set a number (it is not used) or model.cell=lstm")

    def _variant_keys(self) -> list[str]:
        """The LSTM-cell keys set away from the plain cell, as key=value."""
        return [f"model.{k}={getattr(self, k)}" for k, v in PLAIN_CELL.items() if getattr(self, k) != v]

    def _check_variant(self) -> None:
        changed = self._variant_keys()
        if not changed:
            return
        keys, s = ", ".join(changed), "s" if len(changed) == 1 else ""
        if self.cell != "lstm":
            raise ConfigError("model.cell", f"{keys} change{s} an LSTM's cell; model.cell={self.cell} has none: use "
                              "model.cell=lstm, or the plain cell (model.variant=lstm, layer_norm=false, rates 0)")
        if self.backend == "torch":
            raise ConfigError("model.backend", f"{keys} need{s} our LSTM: torch.nn.LSTM has no variants; "
                              "use model.backend=fast (or reference)")
        if self.variant == "nfg" and self.forget_bias == "chrono":
            raise ConfigError("model.forget_bias", "chrono initialises the forget gate, which model.variant=nfg has "
                              "not: set a number (it is not used) or another variant")

    def check_one_step_calls(self, why: str) -> None:
        """For a model that runs its LSTM one step per call (``why``), carrying (h, c) between calls: FGR's previous
        gates are not in (h, c), so such a model would not compute what it trained."""
        if self.variant == "fgr":
            raise ConfigError("model.variant", f"fgr's gates read the previous step's gates, which (h, c) do not "
                              f"carry, and {why}: it would not run as trained; use another variant")

    def stack(self) -> Stack:
        forget_bias = Chrono(self.chrono_max_len) if self.forget_bias == "chrono" else float(self.forget_bias)
        return Stack(self.hidden_size, num_layers=self.num_layers, bidirectional=self.bidirectional,
                     dropout=self.dropout, cell=self.cell, backend=self.backend, forget_bias=forget_bias,
                     variant=self.variant, layer_norm=self.layer_norm, zoneout_c=self.zoneout_c,
                     zoneout_h=self.zoneout_h, recurrent_dropout=self.recurrent_dropout, weight_drop=self.weight_drop)


class Model(nn.Module, Registered):
    """A model of conf/model/ (see the module docstring)."""

    registry: ClassVar[Registry] = MODELS
    kind: ClassVar[TaskKind]
    Config: ClassVar[type[ModelConfig]]

    @classmethod
    def build(cls, cfg: Any, task: Task) -> Model:
        """The model for ``task`` as ``cfg`` (an instance of ``Config``) says."""
        raise NotImplementedError


def models_for(tasks: Iterable[type[Task]]) -> list[str]:
    """The names of the models that serve any of ``tasks``, by kind of task (in the order of KINDS)."""
    kinds = {task.kind for task in tasks}
    return [m.name for kind in KINDS if kind in kinds for m in MODELS.values() if m.kind == kind]


def check_fits(model: type[Model], task: type[Task]) -> None:
    """A :class:`ConfigError` unless ``model`` serves ``task``'s kind of task: known from the classes, before any
    data is read."""
    if model.kind != task.kind:
        fits = models_for([task])
        raise ConfigError(
            "model",
            f"model={model.name} is {_in_words(model.kind, 'model')} and does not fit task={task.name}, "
            f"{_in_words(task.kind, 'task')}; use model={' or model='.join(fits)}",
        )


def _in_words(kind: TaskKind, what: str) -> str:
    """A kind of task as the messages say it: a classification model, a language model, a language model task."""
    return "a language model" if (kind, what) == ("language_model", "model") else f"a {kind.replace('_', ' ')} {what}"


def build_model(cfg: Any, task: Task) -> Model:
    """The model of ``cfg`` (a composed ``model`` group, or a checkpoint's), sized for ``task``, its config read
    once here; a :class:`ConfigError` if the two don't fit or the config cannot work."""
    cls = MODELS.option(cfg)
    check_fits(cls, type(task))
    typed = to_schema(cls.Config, cfg, "model")
    typed.check()
    return cls.build(typed, task)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
