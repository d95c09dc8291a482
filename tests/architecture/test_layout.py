"""The test tree: every test module's basename is unique (pytest's default import mode puts each test directory on
``sys.path`` and imports test modules by basename, so two ``test_x.py`` in different directories collide)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert not [n for n, k in names.items() if k > 1], "rename one of each pair: pytest imports them by basename"
