"""MkDocs hook (mkdocs.yml: ``hooks: [docs/hooks/reference.py]``): the configuration reference page,
reference/configuration.md, generated at build time from the schemas by lstm_train.cli.describe.reference, so
that its keys, defaults and descriptions are those of the code and conf/ being documented."""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from lstm_train.cli.describe import reference

PAGE = "reference/configuration.md"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """The page's headings carry their ids as ``{#id}`` (the anchors other pages link to), which attr_list reads;
    its tables of keys are in ``<div markdown>`` blocks, which md_in_html reads."""
    for extension in ("attr_list", "md_in_html"):
        if extension not in config.markdown_extensions:
            config.markdown_extensions.append(extension)
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated page (replacing a file of that name, should docs/ hold one)."""
    old = files.get_file_from_path(PAGE)
    if old is not None:
        files.remove(old)
    files.append(File.generated(config, PAGE, content=reference(docs=Path(config.docs_dir))))
    return files
