"""models/: no family imports another family (what they share is in models/common), and
the module-level imports have no loop."""

from __future__ import annotations

import ast
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"
FAMILIES = ("brain", "ct", "dce", "classifier")


def _module(path: Path) -> str:
    parts = path.relative_to(MODELS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("models"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("models"))
    return out


def test_no_family_imports_another_family() -> None:
    bad = []
    for fam in FAMILIES:
        for path in (MODELS / fam).glob("*.py"):
            for name in _imports(path, top_level_only=False):
                other = name.split(".")[1] if name.count(".") else ""
                if other in FAMILIES and other != fam:
                    bad.append(f"{_module(path)} imports {name}")
    assert not bad, bad


def test_module_imports_have_no_loop() -> None:
    paths = {_module(p): p for p in MODELS.rglob("*.py")}
    graph = {m: {n for n in _imports(p, top_level_only=True) if n in paths and n != m} for m, p in paths.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, " -> ".join([*trail, m, n])
            if n not in state:
                visit(n, [*trail, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
