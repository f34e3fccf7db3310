"""The house rules, checked: imports go down the stages, no circles, no private names taken
across modules, thin command-line modules and short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neurosono"
# Data flows one way: each room may import the rooms before it (and core, models), never after.
ORDER = (
    "core",
    "models",
    "data",
    "phantom",
    "detect",
    "classify",
    "measure",
    "evaluate",
    "pipeline",
    "serve",
    "cli",
)
FOUNDATIONS = {"core", "models"}
MAX_CLI_LINES = 300
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every neurosono import, lazy ones included."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            if base.startswith("neurosono"):
                found.append((base, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("neurosono")]
    return found


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for target, names in imports(path, name):
            # "from neurosono.x import y" may name a module y inside package x.
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in known] or [target]
            edges[name] |= {t for t in targets if t in known and t != name}
    return edges


def test_imports_go_down_the_stages_only() -> None:
    wrong = []
    for name, targets in graph().items():
        here = room(name)
        for target in targets:
            there = room(target)
            if here is None or there is None or there in FOUNDATIONS or here == there:
                continue
            if ORDER.index(there) > ORDER.index(here):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_foundations_import_no_stage() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if room(name) in FOUNDATIONS
        for target in targets
        if room(target) not in FOUNDATIONS and target != "neurosono"  # the root holds only the version
    ]
    assert not wrong, wrong


def test_no_import_circles() -> None:
    edges = graph()
    edges.pop("neurosono", None)  # the package root only re-exports, lazily
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt == "neurosono":
                continue
            if state.get(nxt) == 1:
                cycle.extend([*trail[trail.index(nxt) :], nxt])
                return True
            if not state.get(nxt) and visit(nxt, [*trail, nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if not state.get(start) and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_private_names_taken_across_modules() -> None:
    taken = [
        f"{name} takes {target}.{n}"
        for name, path in modules().items()
        for target, names in imports(path, name)
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != name
    ]
    assert not taken, taken


def test_command_line_modules_are_thin() -> None:
    long = {
        p.name: n
        for p in (PACKAGE / "cli").glob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_CLI_LINES
    }
    assert not long, long


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_short(path: Path) -> None:
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long
