"""What a config schema is made of: typed fields with value checks, and a ``check`` across fields.

Every option of a config group (conf/<group>/<option>.yaml) has a schema dataclass, beside the class it
configures: the type and the allowed values of every key; the values themselves live in the YAML file, which
pulls its schema in with ``/schema_<group>_<option>@_here_`` (see lstm_train/registry.py). Hydra rejects
wrong types and unknown keys while composing; :func:`lstm_train.config.validate` then runs each field's check
(sizes, ranges, choices) and each schema's :meth:`Schema.check` (what involves several fields) before anything
is built. Every failure is a :class:`~lstm_train.errors.ConfigError` naming the key.

Fields have no defaults on purpose: the YAML files hold the one copy of each value, and a key a YAML file
forgets is reported as missing instead of silently taking a second default.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lstm_train.errors import ConfigError

# A value check, attached to a schema field as metadata: an error message, or None when the value is fine.
Check = Callable[[Any], "str | None"]
C = TypeVar("C", bound=Check)


def allows(values: str) -> Callable[[C], C]:
    """Mark a check with what it allows in a few words (``> 0``, ``[0, 1)``): the configuration reference's
    allowed values (lstm_train/cli/describe.py), read with :func:`allowed`."""

    def mark(check: C) -> C:
        check.allowed = values  # type: ignore[attr-defined]
        return check

    return mark


def allowed(check: Check | None) -> str:
    """What ``check`` allows, as :func:`allows` wrote it; empty for no check (any value of the field's type)."""
    return getattr(check, "allowed", "") if check is not None else ""


@allows("> 0")
def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


@allows(">= 0")
def non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def at_least(n: int) -> Check:
    @allows(f">= {n}")
    def check(v: Any) -> str | None:
        return None if v >= n else f"must be >= {n}, got {v}"

    return check


@allows("[0, 1)")
def probability(v: Any) -> str | None:  # dropout-like: 1.0 would zero everything
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


@allows("[0, 1]")
def unit_interval(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else f"must be in [0, 1], got {v}"


@allows("(0, 1)")
def open_unit_interval(v: Any) -> str | None:
    return None if 0 < v < 1 else f"must be in (0, 1), got {v}"


def one_of(*choices: str) -> Check:
    @allows(f"one of {', '.join(choices)}")
    def check(v: Any) -> str | None:
        return None if v in choices else not_a_choice(v, choices, f"must be one of {', '.join(choices)}")

    return check


def not_a_choice(v: Any, choices: Sequence[str], listing: str, meant: Any = None) -> str:
    """The message for a value outside ``choices``: ``listing; got v`` or, when a choice is close to ``v`` (or to
    what it ``meant``), the likely fix first: ``got v; did you mean X? Listing``."""
    meant = v if meant is None else meant
    if closest(meant, choices):
        return with_suggestion(f"got {v!r}", meant, choices, listing)
    return f"{listing}; got {v!r}"


def closest(word: Any, choices: Iterable[str]) -> list[str]:
    """The choices a typo of ``word`` most likely meant, at most three: those that hold ``word`` or are part of it
    (epoch: max_epochs, accuracy: acc), else difflib's close matches, only those about as close as the closest
    (max_step: max_steps, not max_time and max_epochs too); none when nothing is close."""
    word = str(word)
    matcher = difflib.SequenceMatcher(b=word)
    ratios = {}
    for choice in choices:
        short, long = sorted((word, choice), key=len)
        matcher.set_seq1(choice)
        ratios[choice] = 1.0 if len(short) >= 3 and short in long else matcher.ratio()
    best = max(ratios.values(), default=0.0)
    # 0.7, not difflib's 0.6: a three-letter word one letter off (tpu: cpu) is another word, not a typo
    return [c for c, r in ratios.items() if r >= max(0.7, best - 0.1)][:3]


def as_yaml(value: Any) -> str:
    """A config value as its YAML file and a Hydra override write it, on one line: ``null``, ``true``, ``0.006``,
    ``[0.9, 0.999]``, ``val/acc``, ``${task.monitor}`` (not Python's None, True or quotes)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


def with_suggestion(problem: str, word: Any, choices: Iterable[str], listing: str,
                    shown: Callable[[str], str] = str, close: list[str] | None = None) -> str:
    """``problem; listing``, with "did you mean X?" between the two when a choice is close to ``word``: the likely
    fix before the whole list (``shown`` writes a choice as the user would type it); ``close``: the choices to
    suggest, when known otherwise."""
    close = closest(word, choices) if close is None else close
    if not close:
        return f"{problem}; {listing}"
    close = [shown(c) for c in close]
    meant = " or ".join([", ".join(close[:-1]), close[-1]] if len(close) > 1 else close)
    return f"{problem}; did you mean {meant}? {listing[:1].upper()}{listing[1:]}"


def unknown_key(path: str, keys: Iterable[str], below: Iterable[str] = ()) -> str:
    """The message for a key ``path`` (dotted) that its schema, whose keys are ``keys``, does not have. ``below``:
    the dotted keys of the groups under it (the root's), suggested for one of theirs given without its group
    (max_steps: trainer.max_steps) when no key here is close."""
    keys, below = list(keys), list(below)
    parent, _, name = path.rpartition(".")
    theirs = [k for k in below if k.rpartition(".")[2] == name]  # max_steps: trainer.max_steps
    if not theirs and not closest(name, keys):
        theirs = closest(name, below)  # max_step: trainer.max_steps too
    if theirs:
        return with_suggestion("unknown key", name, [], f"keys of a group are set under it, as {theirs[0]}=VALUE",
                               close=theirs)
    return with_suggestion("unknown key", name, keys, f"the keys here are: {', '.join(keys)}",
                           lambda k: f"{parent}.{k}" if parent else k)


def value(check: Check | None = None, default: Any = MISSING, *, doc: str = "") -> Any:
    """A schema field, checked by ``check`` when not null: mandatory (its value comes from YAML), or with a
    ``default`` for a key added after users had written YAML files of their own without it. ``doc``: the key's
    one-line description, the one copy that ``lstm-train --help`` and the configuration reference show
    (tests/test_config.py fails for a key of ours without one)."""
    return field(default=default, metadata=about(doc, check))


def about(doc: str, check: Check | None = None) -> dict[str, Any]:
    """A field's metadata: its description and value check. :func:`value` writes it; a field that ruff wants
    built by ``dataclasses.field`` (a list, a nested schema) passes it as ``field(..., metadata=about(doc))``."""
    return {"check": check, "doc": doc}


def doc(schema_field: dataclasses.Field) -> str:
    """A schema field's description (:func:`value`'s ``doc``); empty if it has none."""
    return schema_field.metadata.get("doc", "")


@dataclass
class Schema:
    """The base of every schema dataclass."""

    def check(self) -> None:
        """Raise a ConfigError for values that cannot work together; each field's own check has passed."""


S = TypeVar("S", bound=Schema)


def check_fields(node: DictConfig, prefix: str, below: Iterable[str] = ()) -> None:
    """Run the value check of every field under ``node`` (a composed config), naming the first bad key (``below``:
    see :func:`unknown_key`)."""
    schema = OmegaConf.get_type(node)
    checks = {}
    if dataclasses.is_dataclass(schema):
        checks = {f.name: f.metadata.get("check") for f in dataclasses.fields(schema)}
    for key in node:
        child = node[key]
        path = f"{prefix}{key}"
        if checks and key not in checks:  # appended with +key=value: Hydra lets it into a schema node
            raise ConfigError(path, unknown_key(path, checks, below))
        if isinstance(child, DictConfig):
            check_fields(child, path + ".")
        elif child is not None and checks.get(key) is not None:
            problem = checks[key](child)
            if problem:
                raise ConfigError(path, problem)


def escaped(tree: Any) -> Any:
    """Plain dicts and lists (a resolved config) with every literal ``${`` escaped, so that OmegaConf, reading them
    again, takes it as text, not as an interpolation that does not resolve (a data file named so)."""
    if isinstance(tree, Mapping):
        return {k: escaped(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [escaped(v) for v in tree]
    if isinstance(tree, str):  # OmegaConf's grammar: \${ is a literal ${; backslashes before it are doubled
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", tree)
    return tree


def to_schema(schema: type[S], node: DictConfig | Mapping | S, key: str) -> S:
    """``node`` (a composed config group, or the plain dict of a checkpoint's config) as an instance of
    ``schema``, its interpolations resolved: the one place values leave the config for typed attributes.
    A ``_target_`` (the class of an option outside the package, see lstm_train/registry.py) is left out.
    A wrong type, an unknown or a missing key is a ConfigError naming it under ``key``."""
    if isinstance(node, schema):
        return node
    try:
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is schema:
            return OmegaConf.to_object(node)
        plain = escaped(OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) else dict(node)
        plain.pop("_target_", None)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))
    except OmegaConfBaseException as e:
        where = getattr(e, "full_key", None)
        path = f"{key}.{where}" if where else key
        message = str(getattr(e, "msg", "") or e).splitlines()[0]
        if message.startswith("Key ") and " not in " in message:
            message = unknown_key(path, (f.name for f in dataclasses.fields(schema)))
        raise ConfigError(path, message) from None
