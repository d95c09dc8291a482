"""docs/profiles.md shows every shipped profile with the capacity and basis its file gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.profiles.catalog import load_profile, shipped_names

TEXT = (Path(__file__).parents[3] / "docs" / "profiles.md").read_text()


@pytest.mark.parametrize("name", shipped_names())
def test_every_shipped_profile_is_documented_with_its_capacity_and_basis(name):
    [line] = [ln for ln in TEXT.splitlines() if ln.startswith(f"| `{name}` |")]
    p = load_profile(name)
    assert f" {p.kv_capacity_tokens:,} " in line and f" {p.basis} " in line
