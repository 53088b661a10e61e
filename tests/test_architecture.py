"""The one import direction of ../shared/ARCHITECTURE.md: each package imports only those before it in
``LAYERS`` (db ← profiler ← latency_models ← pruning ← training ← latlab), in function bodies too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("db", "profiler", "latency_models", "pruning", "training", "latlab")


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    wrong = {str(f.relative_to(ROOT)): sorted(_imported_packages(f) - allowed)
             for f in sorted((ROOT / package).rglob("*.py"))}
    assert not {f: w for f, w in wrong.items() if w}
