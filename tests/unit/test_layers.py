"""The dependency direction of DESIGN.md, checked on the source: operator -> api, pricing,
ledger, serving.config; serving -> api, pricing, ledger, engine; engine -> torch only; nothing
but the CLI imports the operator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.schemas import ROOT

pytestmark = pytest.mark.unit

PACKAGE = ROOT / "frugalserve"
# package prefix -> the frugalserve packages it may import (itself always allowed)
ALLOWED: dict[str, tuple[str, ...]] = {
    "frugalserve.api": (),
    "frugalserve.pricing": ("frugalserve.api",),
    "frugalserve.ledger": (),
    "frugalserve.serving.engine": (),
    "frugalserve.serving": ("frugalserve.api", "frugalserve.pricing", "frugalserve.ledger"),
    "frugalserve.operator": (
        "frugalserve.api",
        "frugalserve.pricing",
        "frugalserve.ledger",
        "frugalserve.serving.config",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def frugalserve_imports(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    return {name for name in imported if name.startswith("frugalserve")}


def layer_of(module: str) -> str | None:
    matches = [p for p in ALLOWED if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def violations(modules: dict[str, set[str]]) -> list[str]:
    out = []
    for module, imports in modules.items():
        layer = layer_of(module)
        for name in imports:
            if layer is None:
                continue  # top level (cli, package root) may use every layer
            allowed = (layer, *ALLOWED[layer])
            if not any(name == a or name.startswith(a + ".") for a in allowed):
                out.append(f"{module} imports {name}")
            if name.startswith("frugalserve.operator") and layer != "frugalserve.operator":
                out.append(f"{module} imports the operator")
    return sorted(set(out))


def test_layers_point_one_way() -> None:
    modules = {module_name(p): frugalserve_imports(p) for p in PACKAGE.rglob("*.py")}
    assert len(modules) > 10
    assert violations(modules) == []


def test_the_check_sees_a_wrong_import() -> None:
    assert violations({"frugalserve.serving.engine.model": {"frugalserve.ledger"}}) == [
        "frugalserve.serving.engine.model imports frugalserve.ledger"
    ]
    assert violations({"frugalserve.serving.app": {"frugalserve.operator.render"}}) == [
        "frugalserve.serving.app imports frugalserve.operator.render",
        "frugalserve.serving.app imports the operator",
    ]
