"""The layers of docs/architecture.md hold: no module imports a layer above its own (or a
workflow beside it), and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pathoseg"
BASE = {"errors", "io", "runconfig", "operations", "metrics", "__init__"}
RANK = {**dict.fromkeys(BASE, 0), "data": 1, "viz": 1, "models": 2, "engine": 3,
        "pipeline": 4, "hitl": 4, "server": 4, "cli": 5, "__main__": 6}
APART = [{"hitl", "server"}, {"data", "viz"}, {"pipeline", "server"}]  # same rank, never each other


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        module = ".".join(("pathoseg", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        found = edges.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pathoseg"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("pathoseg"))
    return edges


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_imports_a_layer_above_or_beside_its_own():
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            a, b = _layer(module), _layer(target)
            if RANK[b] > RANK[a] or (a != b and {a, b} in APART):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    edges = _imports()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(edges.get(module, ())):
            if seen.get(target) == 1:
                cycles.append([*path[path.index(target):], target] if target in path else [module, target])
            elif target not in seen:
                visit(target, [*path, target])
        seen[module] = 2

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
    # a package importing its own modules (its __init__) is not a cycle of two modules
    real = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c[1:])]
    assert not real, real


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, long
