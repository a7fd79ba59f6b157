"""What lstm-train says about its keys, from the one place each is described: its schema field's ``doc``
(lstm_train/schema.py, ``value(..., doc=...)``).

:func:`config_help` is the config part of ``lstm-train --help``: the composed config, each key's description
beside its value (:func:`config_groups`, the part before it, lists the groups' options in as many columns).
Hydra composes it (with the overrides given, so ``model=tagger --help`` shows the tagger's keys) and reads
conf/config.yaml's ``hydra.help.template``, whose resolvers (lstm_train/config.py) call these. :func:`reference`
is the docs site's configuration reference, in Markdown: every group, option and key with its type, default,
allowed values and description (docs/hooks/reference.py puts it in the site).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from lstm_train.config import CONF_DIR, REGISTRIES, Config, TrainerConfig, flatten, options
from lstm_train.errors import ConfigError
from lstm_train.schema import allowed, as_yaml, doc

WIDTH = 100  # --help's lines: a terminal of 100 columns
COMMENT_AT = 36  # the widest `key: value` with its description beside it; a wider one has it on the lines below

# ---- lstm-train --help ---------------------------------------------------------------------------------------


def config_groups() -> str:
    """Hydra's list of the groups and their options (--help's ``$APP_CONFIG_GROUPS``), each line wrapped to
    :data:`WIDTH` columns; Hydra's own groups (hydra/...) are left to ``--hydra-help``."""
    listing = GlobalHydra.instance().hydra.format_config_groups(lambda g: g != "hydra" and not g.startswith("hydra/"))
    return "\n".join(part for line in listing.splitlines() for part in
                     textwrap.wrap(line, WIDTH, subsequent_indent="  ", break_on_hyphens=False))


def config_help(root: DictConfig, resolve: bool = False) -> str:
    """The composed config ``root`` (Hydra's, with its ``hydra`` node, which is left out) as YAML, each key's
    description beside it as a comment; values as composed, interpolations as written unless ``resolve``
    (``--help --resolve``). A ``$`` is doubled: Hydra fills the template this goes into with
    :class:`string.Template`."""
    rows = list(_rows(root, Config, "", resolve))
    column = max((len(text) for text, _ in rows if len(text) <= COMMENT_AT), default=0) + 2
    lines = []
    for text, about in rows:
        # a pointer to the docs (docs/training.md#weight-averaging-ema) kept whole, not broken at a hyphen
        notes = ["# " + line for line in textwrap.wrap(about, WIDTH - column - 2, break_on_hyphens=False)]
        if not notes or len(text) + 2 > column:  # too wide: its description goes on the lines below
            lines.append(text)
        else:
            lines.append(text.ljust(column) + notes.pop(0))
        lines += [" " * column + note for note in notes]
    return "\n".join(lines).replace("$", "$$")


def _rows(node: DictConfig, schema: type | None, indent: str, resolve: bool) -> Iterator[tuple[str, str]]:
    """(``key: value``, description) for every key under ``node``, depth first; a group's own line first."""
    fields = _fields(schema)
    plain = OmegaConf.to_container(node, resolve=False)
    for key, value in plain.items():
        if key == "hydra" and not indent:
            continue
        about = _about(fields[key]) if key in fields else ""
        if isinstance(value, dict):
            yield f"{indent}{key}:", about
            yield from _rows(node[key], _schema(node[key], None if indent else key), indent + "  ", resolve)
        else:
            if resolve:  # one key at a time: the hydra node beside them holds this help's own ${config_help:}
                value = node[key]
                value = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
            yield f"{indent}{key}: {as_yaml(value)}", about


def _about(schema_field: dataclasses.Field) -> str:
    """A key's description, and for a choice whose description does not name every value, the values (the
    reference's allowed values)."""
    text, values = doc(schema_field), allowed(schema_field.metadata.get("check"))
    choices = values.removeprefix("one of ").split(", ") if values.startswith("one of ") else []
    if all(re.search(rf"\b{re.escape(c)}\b", text) for c in choices):
        return text
    return f"{text} {values[0].upper()}{values[1:]}."


def _schema(node: DictConfig, group: str | None) -> type | None:
    """The schema of a composed group node: its structured type, or for an option of your own (``_target_``, not
    typed until validated) its class's, once its module is imported as a run would."""
    typed = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(typed):
        return typed
    try:
        return REGISTRIES[group].option(node).Config if group in REGISTRIES else None
    except ConfigError:  # its module does not import: the run says so; the help shows its keys undescribed
        return None


def _fields(schema: type | None) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}


# ---- the configuration reference (docs/hooks/reference.py) --------------------------------------------------

GROUPS = ("model", "task", "optim", "scheduler", "trainer")  # typed by schemas
# Groups of files that set other groups' keys (@package _global_); their options say what they are in their
# first comment lines.
PRESETS = {
    "experiment": "A recipe: options and keys of the other groups, for one measured run or sweep.",
    "hparams_search": "An Optuna search (run with -m): its search space, trial budget and a shorter training.",
    "debug": "A complete tiny run in seconds, to try a change.",
}


# Hydra's own groups that conf/hydra adds options to (a sweep's -m): what each is, and the options its plugins bring
HYDRA_GROUPS = {
    "hydra/launcher": ("Where the jobs of a sweep run. Hydra's own basic launcher runs them one after another; its "
                       "plugins add joblib (side by side here), submitit_local and submitit_slurm, whose keys are "
                       "the plugins' (docs/scaling-out.md#sweeps)."),
    "hydra/sweeper": ("What a sweep runs: grid (the default) every combination of the comma lists, optuna_study an "
                      "Optuna search (docs/scaling-out.md#sweeps)."),
    "hydra/sweeper/sampler": "How optuna_study picks each trial's values.",
    "hydra/sweeper/pruner": "When optuna_study stops a hopeless trial early.",
}


@dataclasses.dataclass
class Group:
    """A typed group as the reference lists it: its options' schemas and YAML values, and the keys every option
    has alike (listed once, with each option's default)."""

    name: str
    folder: Path  # conf/<group>
    schemas: dict[str, type]

    # Read once: anchor() asks for the shared keys at every key a preset sets.
    @functools.cached_property
    def values(self) -> dict[str, dict[str, Any]]:
        """Each option's YAML file, as written."""
        return {o: _values(self.folder / f"{o}.yaml") for o in self.schemas}

    @functools.cached_property
    def shared(self) -> list[dataclasses.Field]:
        first, *others = ({f.name: f for f in dataclasses.fields(s)} for s in self.schemas.values())
        return [f for name, f in first.items() if all(name in o and _same(f, o[name]) for o in others)]

    def own(self, option: str) -> list[dataclasses.Field]:
        shared = {f.name for f in self.shared}
        return [f for f in dataclasses.fields(self.schemas[option]) if f.name not in shared]

    def anchor(self, key: str, option: str | None) -> str | None:
        """The id of ``key``'s row: ``group-key`` for a key every option has alike, ``group-option-key`` else;
        None when no option is given for a key that depends on it."""
        if any(f.name == key for f in self.shared):
            return f"{self.name}-{key}"
        if option in self.schemas and any(f.name == key for f in self.own(option)):
            return f"{self.name}-{option}-{key}"
        return None


def _same(a: dataclasses.Field, b: dataclasses.Field) -> bool:
    return (a.type, doc(a), allowed(a.metadata.get("check"))) == (b.type, doc(b), allowed(b.metadata.get("check")))


def reference(conf: Path = CONF_DIR, docs: Path | None = None) -> str:
    """The configuration reference in Markdown (its headings carry ``{#id}``: mkdocs' attr_list): every group,
    option and key of ``conf`` with its type, default (as its YAML file writes it), allowed values and
    description, and what each experiment, search and debug option sets. A description's pointer to a page of
    ``docs`` (the site's docs_dir), ``docs/<page>.md#<anchor>``, is a link there named by that heading's words."""
    root = _values(conf / "config.yaml")
    chosen = {k: v for entry in root["defaults"] if isinstance(entry, dict) for k, v in entry.items()}
    groups = {g: Group(g, conf / g, options_of(g)) for g in GROUPS}
    top = {f.name: f for f in dataclasses.fields(Config)}
    out = ["# Configuration reference", "",
           "Every key lstm-train reads, generated from the schemas when the site is built: the description of a "
           "key here is the one `lstm-train --help` shows beside its value. Pick a group's option with "
           "`group=option` and set a key with `group.key=value`, e.g. `lstm-train model=tagger task=conll "
           "model.hidden_size=256`; every value is checked before anything is built.", "",
           '<div class="config-groups" markdown>', "", "| group | options (default in bold) | what it is |",
           "|---|---|---|"]
    for name in (*GROUPS, *PRESETS):
        names = list(groups[name].schemas) if name in groups else _yaml_options(conf / name)
        links = ", ".join(f"[**{o}**](#{name}-{o})" if chosen.get(name) == o else f"[{o}](#{name}-{o})"
                          for o in names)
        about = doc(top[name]) if name in top else PRESETS[name]
        out.append(f"| [`{name}`](#{name}) | {links} | {_text(about)} |")
    for name, about in HYDRA_GROUPS.items():
        anchor = name.replace("/", "-")
        links = ", ".join(f"[{o}](#{anchor}-{o})" for o in _yaml_options(conf / name))
        out.append(f"| [`{name}`](#{anchor}) | {links} | {_linked(about.split('. ')[0].rstrip('.') + '.', docs)} |")
    out += ["", "</div>", "", "## Top-level keys {#top-level}", "",
            *_table([(top["name"], "name", _value(root, top["name"]))], docs)]
    for group in groups.values():
        out += _group_section(group, doc(top[group.name]), chosen.get(group.name), docs)
    for name, about in PRESETS.items():
        out += _preset_section(name, about, conf, groups, docs)
    out += _hydra_section(conf, docs)
    return "\n".join(out) + "\n"


def _hydra_section(conf: Path, docs: Path | None) -> list[str]:
    """The options conf/hydra adds to Hydra's groups, each with its keys' defaults and comments."""
    out = ["", "## Hydra's launcher and sweeper {#hydra}", "",
           "Hydra's groups of a sweep (`lstm-train -m ...`), with the options this project adds in conf/hydra/. "
           "Choose with `hydra/launcher=OPTION`, and set a key with `hydra.launcher.key=value`."]
    for group, about in HYDRA_GROUPS.items():
        anchor = group.replace("/", "-")
        out += ["", f"### {group} {{#{anchor}}}", "", _linked(about, docs)]
        for option in _yaml_options(conf / group):
            path = conf / group / f"{option}.yaml"
            values = _values(path)
            intro = _linked(_comment(path).rstrip("."), docs) + "."
            if "_target_" in values:
                intro += f" Its class: `{values['_target_']}`."
            out += ["", f"#### {group}={option} {{#{anchor}-{option}}}", "", intro, ""]
            keys = _commented_keys(path, group)
            if keys:
                out += ['<div class="hydra-keys" markdown>', "", "| key | default | description |", "|---|---|---|"]
                out += [f"| `{full}` | `{as_yaml(values[key])}` | {_linked(comment, docs)} |"
                        for key, full, comment in keys]
                out += ["", "</div>"]
    return out


def _commented_keys(path: Path, group: str) -> list[tuple[str, str, str]]:
    """A Hydra option's top-level keys in file order: (short name, full name under the file's package (its
    ``# @package`` line, else the group's path with dots), comment: the lines right above it and the one after it).
    The file's opening comment is its intro, not a key's."""
    lines = path.read_text().splitlines()
    package = next((line.split()[-1] for line in lines if line.startswith("# @package")), group.replace("/", "."))
    start = next((n for n, line in enumerate(lines) if not line.startswith("#")), len(lines))
    keys, above = [], []
    for line in lines[start:]:
        if line.startswith("#"):
            above.append(line[1:].strip())
            continue
        match = re.match(r"(\w+):[^#]*(?:#(.*))?$", line)
        if match and match[1] not in ("defaults", "_target_", "_recursive_"):
            keys.append((match[1], f"{package}.{match[1]}", " ".join([*above, (match[2] or "").strip()]).strip()))
        above = []
    return keys


def options_of(group: str) -> dict[str, type]:
    """The options of a typed group, by name, sorted: trainer's one schema, or config.options()'."""
    schemas = {"trainer": {"default": TrainerConfig}, **options()}[group]
    return dict(sorted(schemas.items()))


def _group_section(group: Group, about: str, default: str | None, docs: Path | None) -> list[str]:
    out = ["", f"## {group.name} {{#{group.name}}}", "", f"{_text(about)} Choose with `{group.name}=OPTION`"
           + (f"; the default is `{group.name}={default}`." if default else "."), ""]
    several = len(group.schemas) > 1
    if several:
        out += [f"### Keys of every {group.name} option {{#{group.name}-keys}}", ""]
    else:  # its one option's section holds the keys (trainer=default says no more than the group does)
        option = next(iter(group.schemas))
        out += [f"### {group.name}={option}: its keys {{#{group.name}-{option}}}", ""]
    rows, values = [], group.values
    for f in group.shared:
        defaults = {o: _value(v, f) for o, v in values.items()}
        if len(set(defaults.values())) == 1:
            shown_default = next(iter(defaults.values()))
        elif all(d == f"`{o}`" for o, d in defaults.items()):
            shown_default = "the option's name"
        else:
            shown_default = "<br>".join(f"{o}: {d}" for o, d in defaults.items())
        rows.append((f, group.anchor(f.name, None), shown_default))
    out += _table(rows, docs)
    for option in group.schemas if several else ():
        out += ["", f"### {group.name}={option} {{#{group.name}-{option}}}", ""]
        intro = _linked(_comment(group.folder / f"{option}.yaml"), docs)
        target = values[option].get("_target_")  # optim's options say what they are by their class alone
        intro = intro or (f"`{target}`." if target else "")
        if intro:
            out += [intro, ""]
        own = group.own(option)
        if own:
            out += _table([(f, group.anchor(f.name, option), _value(values[option], f)) for f in own], docs)
        else:
            out.append(f"Its keys are those of every {group.name} option.")
    return out


def _table(rows: list[tuple[dataclasses.Field, str | None, str]], docs: Path | None) -> list[str]:
    """A table of keys: (field, anchor id, default as shown), in a ``config-keys`` block (md_in_html), which
    docs/stylesheets/extra.css keeps a key and a default on one line."""
    out = ['<div class="config-keys" markdown>', "", "| key | type | default | allowed | description |",
           "|---|---|---|---|---|"]
    for f, anchor, default in rows:
        name = f'<a id="{anchor}" href="#{anchor}">`{f.name}`</a>' if anchor else f"`{f.name}`"
        kind = str(f.type).replace("Any", "any").replace(" | None", " or null")
        out.append(f"| {name} | {_text(kind)} | {default} | {_text(allowed(f.metadata.get('check')))} | "
                   f"{_linked(doc(f), docs)} |")
    return [*out, "", "</div>"]


def _preset_section(name: str, about: str, conf: Path, groups: dict[str, Group], docs: Path | None) -> list[str]:
    out = ["", f"## {name} {{#{name}}}", "", f"{_text(about)} Choose with `{name}=OPTION`; none by default."]
    for option in _yaml_options(conf / name):
        path = conf / name / f"{option}.yaml"
        settings = _values(path)
        picks = _picks(conf / name, option)
        out += ["", f"### {name}={option} {{#{name}-{option}}}", ""]
        intro = _comment(path)
        if intro:
            out += [_linked(intro, docs), ""]
        sets = [f"[`{g}={o}`](#{g}-{o})" if g in (*GROUPS, name) else f"`{g}={o}`" for g, o in
                _picks(conf / name, option, own=True).items()]
        for key, value in flatten({k: v for k, v in settings.items() if k != "defaults"}).items():
            group, _, rest = key.partition(".")
            anchor = groups[group].anchor(rest, picks.get(group)) if group in groups else None
            anchor = "name" if key == "name" else anchor
            code = f"`{key}={as_yaml(value)}`"
            sets.append(f"[{code}](#{anchor})" if anchor else code)
        out.append(f"Sets: {', '.join(sets)}.")
    return out


def _picks(folder: Path, option: str, own: bool = False) -> dict[str, str]:
    """The options a preset's file picks for other groups (its defaults list: ``override /model: tagger``), and
    (unless ``own``) those of another option of its group that it applies first (``- brown_pos``)."""
    picks = {}
    for entry in _values(folder / f"{option}.yaml").get("defaults", []):
        if isinstance(entry, dict):
            picks.update({k.removeprefix("override ").strip("/"): v for k, v in entry.items()})
        elif entry != "_self_":
            picks.update({folder.name: entry} if own else _picks(folder, entry))
    return picks


def _values(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _value(values: Any, f: dataclasses.Field) -> str:
    """A key's default as ``values`` (an option's YAML file) writes it, else its schema's; — when it has none."""
    if f.name in values:
        return f"`{as_yaml(values[f.name])}`"
    if f.default is not MISSING and f.default is not dataclasses.MISSING:
        return f"`{as_yaml(f.default)}`"
    return "—"


def _yaml_options(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _comment(path: Path) -> str:
    """What a YAML file says of itself: its first comment lines, up to the first command shown (an indented
    ``#   lstm-train ...``), without the sentence that introduces that command."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.startswith("#   ") or line.rstrip() == "#":
            break
        if not line.startswith("# @package"):
            lines.append(line[1:].strip())
    text = " ".join(lines)
    if text.endswith(":"):  # the sentence before a command: gone, or if it is the only one, ended
        text = re.sub(r"(?<=[.)])\s+[^.]*:$", "", text).removesuffix(":") + "."
    return text


def _text(text: str) -> str:
    """Plain text for a Markdown table cell: HTML and Markdown's own characters escaped."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", html.escape(text, quote=False))


DOCS_LINK = re.compile(r"docs/((?:[\w-]+/)*[\w-]+\.md)(?:#([\w-]+))?")  # docs/training.md#weight-averaging-ema


def _linked(text: str, docs: Path | None) -> str:
    """:func:`_text`, with each ``docs/<page>.md#<anchor>`` in it that ``docs`` has a link from the reference
    (a sibling of reference/), named by its page and heading (:func:`_heading`); one it lacks stays text."""
    out, at = [], 0
    for match in DOCS_LINK.finditer(text):
        page, anchor = match.groups()
        name = _heading(docs, page, anchor) if docs else None
        if name:
            out += [_text(text[at:match.start()]), f"[{_text(name)}](../{match.group().removeprefix('docs/')})"]
            at = match.end()
    return "".join([*out, _text(text[at:])])


def _heading(docs: Path, page: str, anchor: str | None) -> str | None:
    """The page's title (up to a colon) and the words of its heading whose id is ``anchor`` (its ``{#id}``, else
    as toc's default slugify makes it), between them a right-pointing angle quote; the title alone without
    ``anchor``; None if the page or heading is not there."""
    from markdown.extensions.toc import slugify  # the docs build's own; only the build gets here

    if not (docs / page).is_file():
        return None
    headings, fenced = [], False  # (words, id)
    for line in (docs / page).read_text().splitlines():
        fenced ^= line.lstrip().startswith("```")
        heading = None if fenced else re.match(r"#{1,6} (.*?)(?: \{#([\w-]+)\})?$", line.rstrip())
        if heading:
            words = heading.group(1).replace("`", "")
            headings.append((words, heading.group(2) or slugify(words, "-")))
    title = headings[0][0].split(": ")[0] if headings else page
    if anchor is None:
        return title
    return next((f"{title} \u203a {words}" for words, id_ in headings[1:] if id_ == anchor), None)
