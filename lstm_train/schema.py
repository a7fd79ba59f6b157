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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lstm_train.errors import ConfigError

# A value check, attached to a schema field as metadata: an error message, or None when the value is fine.
Check = Callable[[Any], "str | None"]


def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def at_least(n: int) -> Check:
    def check(v: Any) -> str | None:
        return None if v >= n else f"must be >= {n}, got {v}"

    return check


def probability(v: Any) -> str | None:  # dropout-like: 1.0 would zero everything
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


def unit_interval(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else f"must be in [0, 1], got {v}"


def open_unit_interval(v: Any) -> str | None:
    return None if 0 < v < 1 else f"must be in (0, 1), got {v}"


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"

    return check


def value(check: Check | None = None) -> Any:
    """A schema field: mandatory (its value comes from YAML), checked by ``check`` when not null."""
    return field(default=MISSING, metadata={"check": check})


@dataclass
class Schema:
    """The base of every schema dataclass."""

    def check(self) -> None:
        """Raise a ConfigError for values that cannot work together; each field's own check has passed."""


S = TypeVar("S", bound=Schema)


def check_fields(node: DictConfig, prefix: str) -> None:
    """Run the value check of every field under ``node`` (a composed config), naming the first bad key."""
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
            check_fields(child, path + ".")
        elif child is not None and checks.get(key) is not None:
            problem = checks[key](child)
            if problem:
                raise ConfigError(path, problem)


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
        plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        plain.pop("_target_", None)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))
    except OmegaConfBaseException as e:
        where = getattr(e, "full_key", None)
        message = str(getattr(e, "msg", "") or e).splitlines()[0]
        if message.startswith("Key ") and " not in " in message:
            message = f"unknown key; the keys here are: {', '.join(f.name for f in dataclasses.fields(schema))}"
        raise ConfigError(f"{key}.{where}" if where else key, message) from None
