"""Nothing outside ``mock_gateway`` reaches into the gateway core's private members.

The rule, over the source of every module of ``sim``, ``session_server``, ``testbed_common`` and ``benchmarks``:
no ``<expr>._name`` (a ``_``-prefixed, non-dunder attribute) where ``<expr>`` may be a ``GatewayCore``.

What an expression may be, by a small inference over the project's classes (``mock_gateway`` included: its
objects cross into the others): a call ``C(...)`` is a ``C``; a name is what its function (or the module)
assigns to it, or what a parameter's or variable's annotation names (``core: GatewayCore``); ``self`` is its
class; ``<x>.<attr>`` is what ``<x>``'s classes assign to ``self.<attr>`` (or annotate as a field); tuple
assignments pair targets with values; ``a or b`` may be either. Where ``<x>``'s class is unknown (an untyped
parameter), ``<x>.<attr>`` is a gateway core if any class of the project assigns one to ``self.<attr>``
(conservative: e.g. ``tr.gateway.core`` through an untyped ``tr``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("sim", "session_server", "testbed_common", "benchmarks")
CORE_CLASS = "GatewayCore"


def _private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


class Types:
    """The classes each expression may be an instance of, for the project's modules."""

    def __init__(self, trees: dict[str, ast.Module]) -> None:
        self.trees = trees
        self.classes = {n.name for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.ClassDef)}
        self.classes.add(CORE_CLASS)
        self.fields: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # class -> attr -> types
        self.scopes: dict[ast.AST, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # scope -> names
        self.owner: dict[ast.AST, ast.AST] = {}  # node -> its scope (function, or module)
        self.cls: dict[ast.AST, str] = {}  # function -> its class
        for tree in trees.values():
            self._index(tree, tree, None)
        while self._infer():
            pass

    def _index(self, node: ast.AST, scope: ast.AST, cls: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                self.owner[child] = scope
                if cls is not None:
                    self.cls[child] = cls
                self._index(child, child, None)
            elif isinstance(child, ast.ClassDef):
                self.owner[child] = scope
                self._index(child, scope, child.name)
            else:
                self.owner[child] = scope
                self._index(child, scope, cls)

    def annotated(self, annotation: ast.expr | None) -> set[str]:
        if annotation is None:
            return set()
        return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(annotation)
                if isinstance(n, ast.Name | ast.Attribute)} & self.classes | (
            {c for c in self.classes if isinstance(annotation, ast.Constant) and c in str(annotation.value)})

    def names(self, scope: ast.AST, name: str) -> set[str]:
        """What ``name`` may be in ``scope``: its own bindings, else the enclosing scopes'."""
        while True:
            if name == "self" and scope in self.cls:
                return {self.cls[scope]}
            found = self.scopes[scope].get(name)
            if found or scope not in self.owner:
                return set(found or ())
            scope = self.owner[scope]

    def of(self, e: ast.expr) -> set[str]:
        if isinstance(e, ast.Call):
            f = e.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            return {name} if name in self.classes else set()
        if isinstance(e, ast.BoolOp):
            return set().union(*(self.of(v) for v in e.values))
        if isinstance(e, ast.Name):
            return self.names(self.owner[e], e.id)
        if isinstance(e, ast.Attribute):
            owners = self.of(e.value)
            if owners:
                return set().union(*(self.fields[c].get(e.attr, set()) for c in owners))
            return {CORE_CLASS} if any(CORE_CLASS in f.get(e.attr, ()) for f in self.fields.values()) else set()
        return set()

    def _bind(self, target: ast.expr, types: set[str]) -> bool:
        if not types:
            return False
        if isinstance(target, ast.Name):
            into = self.scopes[self.owner[target]][target.id]
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            scope = self.owner[target]
            if scope not in self.cls:
                return False
            into = self.fields[self.cls[scope]][target.attr]
        else:
            return False
        new = not types <= into
        into |= types
        return new

    def _infer(self) -> bool:
        """One pass over every binding; True if something new was learnt."""
        new = False
        for tree in self.trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.arg):
                    into = self.scopes[self.owner[node]][node.arg]
                    types = self.annotated(node.annotation)
                    new |= not types <= into
                    into |= types
                elif isinstance(node, ast.AnnAssign):
                    types = self.annotated(node.annotation) | (self.of(node.value) if node.value else set())
                    if isinstance(node.target, ast.Name) and isinstance(self.owner.get(node.target), ast.Module):
                        cls = self._class_of_field(tree, node)
                        if cls is not None:
                            into = self.fields[cls][node.target.id]
                            new |= not types <= into
                            into |= types
                            continue
                    new |= self._bind(node.target, types)
                elif isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                            for t, v in zip(target.elts, node.value.elts, strict=False):
                                new |= self._bind(t, self.of(v))
                        else:
                            new |= self._bind(target, self.of(node.value))
        return new

    @staticmethod
    def _class_of_field(tree: ast.Module, node: ast.AnnAssign) -> str | None:
        for c in ast.walk(tree):
            if isinstance(c, ast.ClassDef) and node in c.body:
                return c.name
        return None


def violations(sources: dict[str, str], context: dict[str, str] | None = None) -> list[str]:
    """``file:line: expr`` for every private access to a possible gateway core in ``sources``; ``context``: more
    modules whose classes and bindings count (their own accesses are allowed)."""
    trees = {k: ast.parse(v) for k, v in {**(context or {}), **sources}.items()}
    types = Types(trees)
    out = []
    for k in sources:
        for node in ast.walk(trees[k]):
            if isinstance(node, ast.Attribute) and _private(node.attr) and CORE_CLASS in types.of(node.value):
                out.append((node.lineno, f"{k}:{node.lineno}: {ast.unparse(node)}"))
    return [v for _, v in sorted(out)]


def read(dirs: tuple[str, ...]) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for d in dirs for p in sorted((ROOT / d).rglob("*.py"))}


def test_no_module_outside_the_gateway_uses_a_private_member_of_the_gateway_core():
    assert violations(read(CHECKED), context=read(("mock_gateway",))) == []


BAD = """
from mock_gateway.core import GatewayCore

class Replayer:
    def __init__(self, config):
        self.gateway = GatewayCore(config)

    def send(self):
        core, now = self.gateway, 0.0
        return core._selected(None), now

def pending(core: GatewayCore | None):
    return core._pending

def through(transport):
    return transport.gateway._open, transport.gateway.__class__, transport.gateway.clock

def built(config):
    gw = Replayer(config).gateway
    return gw._ids
"""

GOOD = """
from sim.worker.core import WorkerCore

class Answer:
    def __init__(self, core: WorkerCore):
        self.core = core

    def serial(self):
        core = self.core
        w = WorkerCore(None)
        return core._count + w._count + self._serial
"""


def test_the_rule_finds_private_accesses_through_every_kind_of_binding():
    assert violations({"bad.py": BAD}) == [
        "bad.py:10: core._selected",
        "bad.py:13: core._pending",
        "bad.py:16: transport.gateway._open",
        "bad.py:20: gw._ids",
    ]


SAME_NAME = """
from mock_gateway.core import GatewayCore

class Direct:
    def __init__(self, config):
        self.core = GatewayCore(config)
"""


@pytest.mark.parametrize("context", [{}, {"bad.py": BAD, "same_name.py": SAME_NAME}])
def test_the_rule_leaves_other_cores_alone_even_with_a_same_named_gateway_attribute(context):
    assert violations({"good.py": GOOD}, context) == []
