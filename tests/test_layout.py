"""The package's layers (docs/layout.md): a module imports, at its top, only from its own layer and the layers
before it in LAYERS, so each folder can be read knowing only those above it. (An import inside a function may
reach a later layer: the data-parallel worker runs lstm_train.train's train.)"""

from __future__ import annotations

import ast

import pytest

from tests import ROOT

LAYERS = ["errors", "schema", "registry", "nn", "tasks", "models", "config", "runs", "training", "cli", "train"]
PACKAGE = ROOT / "lstm_train"


def layer(module: str) -> str | None:
    """The layer of a dotted module name under lstm_train (None: not ours, or the package itself)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "lstm_train" and len(parts) > 1 else None


def top_level_imports(path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] if layer(node.module) else [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_from_its_layer_and_those_before_it(path):
    own = layer(".".join(("lstm_train", *path.relative_to(PACKAGE).with_suffix("").parts)))
    if own == "__init__":
        return
    assert own in LAYERS, f"{own}: a new folder or top-level module; add it to LAYERS and to docs/layout.md"
    later = [m for m in top_level_imports(path) if (d := layer(m)) in LAYERS and LAYERS.index(d) > LAYERS.index(own)]
    assert not later, f"{own} imports from a later layer: {later}"
