"""The configuration reference (Markdown for the docs site) and --help's described config, both from the schemas."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

from lstm_train.cli.describe import DOCS_LINK, config_help, options_of, reference
from lstm_train.config import CONF_DIR, Config
from lstm_train.schema import allowed, doc
from tests import ROOT

GROUPS = ("model", "task", "optim", "scheduler", "trainer")
PRESETS = ("experiment", "hparams_search", "debug")


@pytest.fixture(scope="module")
def page() -> str:
    return reference(docs=ROOT / "docs")  # as the docs build makes it


def rows(page: str) -> dict[str, str]:
    """Each key's table row by its anchor id."""
    return {m.group(1): line for line in page.splitlines() for m in [re.match(r'\| <a id="([^"]+)"', line)] if m}


def cell(text: str) -> str:
    """Text as a table cell writes it (escaped)."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def described(text: str) -> list[str]:
    """Text as the reference's cells have it around its pointers to the docs (which become links)."""
    return [cell(part) for part in DOCS_LINK.sub("\0", text).split("\0")]


def test_every_key_of_every_option_has_a_row_with_its_description_and_allowed_values(page):
    found = rows(page)
    for group in GROUPS:
        for option, schema in options_of(group).items():
            for f in dataclasses.fields(schema):
                row = found.get(f"{group}-{f.name}") or found.get(f"{group}-{option}-{f.name}")
                assert row is not None, f"{group}={option}: {f.name} has no row"
                assert f"`{f.name}`" in row and all(part in row for part in described(doc(f))), (group, f.name)
                assert cell(allowed(f.metadata.get("check"))) in row, (group, option, f.name)
    assert cell(doc(next(f for f in dataclasses.fields(Config) if f.name == "name"))) in found["name"]


def test_a_pointer_to_the_docs_is_a_link_named_by_its_page_and_heading(page):
    assert "(docs/training.md#weight-averaging-ema)" in doc(trainer_field("ema_decay"))  # as --help shows it
    ema = "([Training \u203a Weight averaging (EMA)](../training.md#weight-averaging-ema))"
    assert ema in rows(page)["trainer-ema_decay"]
    g2p = page.partition("{#experiment-g2p}")[2].partition("\n### ")[0]  # in an experiment's comment too
    assert "([Sequence to sequence (g2p) \u203a Measured](../tasks/seq2seq.md#measured))" in g2p
    # without the docs (or a page they lack) the pointer stays text
    assert "(docs/training.md#weight-averaging-ema)" in rows(reference())["trainer-ema_decay"]


def trainer_field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(options_of("trainer")["default"]) if f.name == name)


def test_a_shared_key_shows_each_options_default_as_its_yaml_writes_it(page):
    found = rows(page)
    assert "char: `256`<br>classifier: `64`<br>seq2seq: `128`<br>tagger: `128`" in found["model-hidden_size"]
    assert "| `fast` |" in found["model-backend"]  # the same in every option: once
    assert "`val/${task.monitor}`" in found["trainer-monitor"]  # an interpolation as written
    assert "`${threads_per_job:}`" in found["trainer-num_threads"]
    assert "| int or null |" in found["trainer-max_steps"] and "| `3000` |" in found["trainer-max_steps"]
    assert "`[0.9, 0.999]`" in found["optim-adam-betas"]


def test_an_anchor_for_every_group_and_option_and_each_link_lands_on_one(page):
    headings = re.findall(r"^#+ .* \{#([\w-]+)\}$", page, re.M)
    ids = headings + list(rows(page))
    assert len(ids) == len(set(ids)), "an id twice"
    for group in GROUPS:
        assert group in headings and all(f"{group}-{o}" in headings for o in options_of(group))
    for group in PRESETS:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert group in headings and all(f"{group}-{o}" in headings for o in options)
    links = re.findall(r"\]\(#([\w-]+)\)", page)
    assert links and not set(links) - set(ids)


def test_hydras_groups_list_each_option_of_conf_hydra_with_its_keys_defaults_and_comments(page):
    section = page.partition("## Hydra's launcher and sweeper {#hydra}")[2]
    for folder in ("launcher", "sweeper", "sweeper/sampler", "sweeper/pruner"):
        anchor = f"hydra-{folder.replace('/', '-')}"
        assert f"{{#{anchor}}}" in section and f"](#{anchor})" in page  # and a row in the table of groups
        for path in sorted((CONF_DIR / "hydra" / folder).glob("*.yaml")):
            option = section.partition(f"{{#{anchor}-{path.stem}}}")[2].partition("\n#")[0]
            keys = [k for k in yaml.safe_load(path.read_text()) if k not in ("defaults", "_target_", "_recursive_")]
            table = re.findall(r"^\| `([\w.]+)` \| `(.*)` \| (.*) \|$", option, re.M)
            assert [name.rpartition(".")[2] for name, _, _ in table] == keys, path  # in the file's order
            assert all(about for _, _, about in table), path  # each key says what it is
    rows_ = {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `(hydra\.[\w.]+)` \| `(.*)` \| (.*) \|$", section, re.M)}
    assert rows_["hydra.sweeper.pruner"] == ("null", "no pruner")  # pruner=none's own @package
    assert rows_["hydra.sweeper.sampler.n_startup_trials"][0] == "10"
    assert rows_["hydra.sweeper.storage"][0] == "sqlite:///${hydra.sweep.dir}/optuna.db"  # as written
    assert rows_["hydra.launcher.signal_delay_s"][1].startswith("submitit asks SLURM")  # the comment above the key
    assert "Its class: `optuna.pruners.MedianPruner`." in section


def test_a_preset_says_what_it_sets_linking_each_key_to_its_row(page):
    g2p = page.partition("{#experiment-g2p}")[2].partition("\n### ")[0]
    assert "Grapheme to phoneme" in g2p  # its first comment lines
    assert "[`model=seq2seq`](#model-seq2seq)" in g2p
    assert "[`model.attention=true`](#model-seq2seq-attention)" in g2p  # the option the experiment picks
    assert "[`trainer.label_smoothing=0.1`](#trainer-label_smoothing)" in g2p
    chars = page.partition("{#experiment-brown_pos_chars}")[2].partition("\n### ")[0]
    assert "[`model.char_dim=32`](#model-tagger-char_dim)" in chars  # tagger: picked by experiment=brown_pos


def test_help_puts_each_description_beside_its_key_within_100_columns(compose_cfg):
    text = config_help(compose_cfg("scheduler=cosine"))
    assert "  monitor: val/$${task.monitor}" in text  # $ doubled: Hydra's string.Template fills the help
    lines = text.replace("$$", "$").splitlines()
    assert max(map(len, lines)) <= 100
    column = lines[0].index("# ")
    assert lines[0].startswith("name: ") and lines[0][column + 2:] == "The run's name: part of its run dir's name."
    target = lines.index("  _target_: lstm_train.training.optim.WarmupCosineLR")  # too wide: described below
    assert lines[target + 1] == " " * column + "# The scheduler class, built by Hydra's instantiate; null:"
    assert lines[target + 2] == " " * column + "# constant lr."
    assert " " * column + "# (docs/training.md#weight-averaging-ema)." in lines  # a pointer whole, not at a hyphen


def test_the_mkdocs_hook_builds_the_page(tmp_path):
    pytest.importorskip("mkdocs")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("[EMA](reference/configuration.md#trainer-ema_decay)\n")
    hook = ROOT / "docs" / "hooks" / "reference.py"
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\nhooks: [{hook}]\n"
                                         "nav: [index.md, reference/configuration.md]\n")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text()
    assert 'id="trainer-ema_decay"' in html and 'id="model-classifier"' in html
