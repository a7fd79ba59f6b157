"""What lstm-train says about its keys, from the one place each is described: its schema field's ``doc``
(lstm_train/schema.py, ``value(..., doc=...)``).

:func:`config_help` is the config part of ``lstm-train --help``: the composed config, each key's description
beside its value. Hydra composes it (with the overrides given, so ``model=tagger --help`` shows the tagger's
keys) and reads conf/config.yaml's ``hydra.help.template``, whose ``${config_help:}`` (a resolver,
lstm_train/config.py) calls it. :func:`reference` is the docs site's configuration reference, in Markdown:
every group, option and key with its type, default, allowed values and description (docs/hooks/reference.py
puts it in the site).
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from lstm_train.config import REGISTRIES, Config
from lstm_train.schema import doc

WIDTH = 100  # --help's lines: a terminal of 100 columns
COMMENT_AT = 36  # the widest `key: value` whose description starts on its own line; a longer one's goes below

# ---- lstm-train --help ---------------------------------------------------------------------------------------


def config_help(root: DictConfig) -> str:
    """The composed config ``root`` (Hydra's, with its ``hydra`` node, which is left out) as YAML, each key's
    description beside it as a comment; values as composed, interpolations unresolved. A ``$`` is doubled:
    Hydra fills the template this goes into with :class:`string.Template`."""
    rows = list(_rows(root, Config, ""))
    column = max((len(text) for text, _ in rows if len(text) <= COMMENT_AT), default=0) + 2
    lines = []
    for text, about in rows:
        notes = ["# " + line for line in textwrap.wrap(about, WIDTH - column - 2)]
        if not notes or len(text) + 2 > column:  # too wide: its description goes on the lines below
            lines.append(text)
        else:
            lines.append(text.ljust(column) + notes.pop(0))
        lines += [" " * column + note for note in notes]
    return "\n".join(lines).replace("$", "$$")


def _rows(node: DictConfig, schema: type | None, indent: str) -> Iterator[tuple[str, str]]:
    """(``key: value``, description) for every key under ``node``, depth first; a group's own line first."""
    fields = _fields(schema)
    plain = OmegaConf.to_container(node, resolve=False)
    for key, value in plain.items():
        if key == "hydra" and not indent:
            continue
        about = doc(fields[key]) if key in fields else ""
        if isinstance(value, dict):
            yield f"{indent}{key}:", about
            yield from _rows(node[key], _schema(node[key], None if indent else key), indent + "  ")
        else:
            yield f"{indent}{key}: {shown(value)}", about


def _schema(node: DictConfig, group: str | None) -> type | None:
    """The schema of a composed group node: its structured type, or for an option of your own (``_target_``, not
    typed until validated) the class registered under its name, if imported."""
    typed = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(typed):
        return typed
    cls = REGISTRIES[group].get(node.get("name")) if group in REGISTRIES else None
    return cls.Config if cls is not None else None


def _fields(schema: type | None) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}


def shown(value: Any) -> str:
    """A value as YAML writes it on one line: ``null``, ``0.006``, ``[0.9, 0.999]``, ``${task.monitor}``."""
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return yaml.safe_dump(value, width=10**6).removesuffix("\n...\n").strip()
