"""The project's import graph: no cycle between modules, and the dependency direction of the tree.

Leaf utilities (``testbed_common``) import nothing else of the project; the three servers
(``mock_gateway``, ``session_server``, ``sim.worker``) import only the leaf utilities, the pure engine
(``sim.engine``, the worker's) and themselves; ``sim`` imports anything. Every import counts, at module
level or inside a function, except those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("testbed_common", "mock_gateway", "session_server", "sim")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` resolves to the module when it is one)."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (c := visit(m)) is not None:
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)) is not None:
            return c
    return None


def layer(module: str) -> str:
    if module.startswith("testbed_common"):
        return "leaf"
    if module.startswith(("sim.worker", "mock_gateway", "session_server")):
        return "server"
    if module.startswith("sim.engine"):
        return "engine"
    return "sim"


ALLOWED = {
    "leaf": {"leaf"},
    "engine": {"leaf", "engine"},
    "server": {"leaf", "engine", "server"},
    "sim": {"leaf", "engine", "server", "sim"},
}


def top(module: str) -> str:
    return ".".join(module.split(".")[:2]) if module.startswith("sim.") else module.split(".")[0]


def test_finds_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_reads_the_project():
    graph = import_graph()
    assert "testbed_common.tokenizer" in graph["session_server.tokens"]
    assert "mock_gateway.core" in graph["mock_gateway.app"]


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(project_modules()))
def test_dependencies_point_down_the_tree(name):
    deps = import_graph()[name]
    bad = sorted(d for d in deps if layer(d) not in ALLOWED[layer(name)])
    assert not bad, f"{name} ({layer(name)}) imports {bad}"
    if layer(name) == "server":  # the servers do not import each other
        others = sorted(d for d in deps if layer(d) == "server" and top(d) != top(name))
        assert not others, f"{name} imports another server: {others}"
