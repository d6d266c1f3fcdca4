"""The package's layers: data flows one way, records -> method -> model folder -> evaluation -> report, with the test
bed beside them. A module may import its own layer and the ones below it, never one above."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unstar_trl"
LAYERS = ["foundation", "method", "testbed", "evaluation", "commands"]
"""Bottom to top. Foundation: io, text, data, models, progress (and the package's __init__, which only names)."""


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "unstar_trl" or len(parts) == 1:
        return "foundation"
    if parts[1] in ("method", "testbed", "evaluation", "commands"):
        return parts[1]
    return "commands" if parts[1] == "cli" else "foundation"


def imports(path: Path) -> set[str]:
    """The unstar_trl modules a file imports, relative imports resolved (at any depth: lazy imports count too)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            name = ".".join(part for part in (base, node.module or "") if part)
            found.add(name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("unstar_trl")}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = LAYERS.index(layer(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)))
    above = sorted(name for name in imports(path) if LAYERS.index(layer(name)) > own)
    assert not above, f"{path.relative_to(PACKAGE)} imports {above}"


def test_the_method_never_imports_the_test_bed():
    offenders = {str(path.relative_to(PACKAGE)): sorted(name for name in imports(path) if layer(name) == "testbed")
                 for path in (PACKAGE / "method").rglob("*.py")}
    assert not {path: names for path, names in offenders.items() if names}
