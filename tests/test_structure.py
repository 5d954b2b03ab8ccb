"""The library reads in one sitting: no module over 450 lines, no function over 60, no import cycle
between its modules, and no import of the library inside a function (the way to dodge a cycle); the
command line alone imports each command's module when that command runs, to start fast."""

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "picie_lib"
MODULES = sorted(LIBRARY.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports(tree: ast.AST) -> set[str]:
    """The library modules a module imports at its top level (``from picie_lib import x`` names x)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("picie_lib"):
            found.add(node.module)
            if node.module == "picie_lib":
                found |= {f"picie_lib.{alias.name}" for alias in node.names}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the path that closes it (depth-first search)."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for node in sorted(graph):
        visit(node, [node])
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_modules_and_functions_are_short(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= 450, f"{path.name}: {len(lines)} lines"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} is {length} lines"


def test_no_import_cycle_and_no_import_that_dodges_one():
    graph, inside = {}, []
    for path in MODULES:
        tree = ast.parse(path.read_text())
        graph[module_name(path)] = library_imports(tree)
        for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("picie_lib"):
                    inside.append(f"{path.name}: {func.name} imports {node.module}")
    assert cycles(graph) == []
    assert [line for line in inside if not line.startswith("cli.py")] == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
