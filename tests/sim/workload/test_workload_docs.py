"""docs/scenarios.md documents the format the loader reads: its example loads, and every table, key, default,
distribution kind with its parameters, arrival pattern with its keys and fault kind is in it (read from the
loader's own tables, so a key added without docs fails here)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from sim.faults import FAULT_KINDS, FaultSpec
from sim.workload.plans import plan_sessions
from sim.workload.scenario import (
    ARRIVAL_KEYS,
    DIST_BOUNDS,
    DIST_PARAMS,
    TABLES,
    TOP_KEYS,
    Scenario,
    load_scenario,
)

DOC = Path(__file__).parents[3] / "docs" / "scenarios.md"
TEXT = DOC.read_text()


def row(first_cell: str) -> list[str]:
    """The cells of the markdown table row whose first cell is ``first_cell``."""
    [line] = [ln for ln in TEXT.splitlines() if ln.startswith(f"| {first_cell} |")]
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_the_example_is_complete_and_loads(tmp_path):
    [example] = re.findall(r"```toml\n(.*?)```", TEXT, flags=re.S)
    data = tomllib.loads(example)
    pattern = data["arrivals"]["pattern"]
    other_patterns = {k for p, ks in ARRIVAL_KEYS.items() if p != pattern for k in ks}
    for table, keys in TABLES.items():
        assert set(data[table]) == set(keys) - (other_patterns if table == "arrivals" else set()), table
    assert set(TOP_KEYS) <= set(data) and data["faults"]
    f = tmp_path / "example.toml"
    f.write_text(example)
    s = load_scenario(str(f))
    assert s.name == data["name"] and len(s.faults) == len(data["faults"])
    assert max(len(p.turns) for p in plan_sessions(s)) > 1


@pytest.mark.parametrize(("table", "key"), [(t, k) for t, keys in TABLES.items() for k in keys])
def test_every_table_key_is_documented_with_its_default(table, key):
    default = row(f"`{table}.{key}`")[1].strip("`")
    value = tomllib.loads(f"v = {default}")["v"]
    # (a pattern's own key needs the pattern set: the loader refuses it under another)
    owner = [p for p, ks in ARRIVAL_KEYS.items() if key in ks] if table == "arrivals" else []
    pattern = {"pattern": owner[0]} if owner else {}
    expected = Scenario(arrival=pattern["pattern"]) if pattern else Scenario()
    assert Scenario.from_dict({table: {**pattern, key: value}}, name="custom") == expected, f"{table}.{key}"


def test_top_level_keys_are_documented():
    for key in TOP_KEYS:
        assert row(f"`{key}`")


@pytest.mark.parametrize("kind", list(DIST_PARAMS))
def test_every_distribution_kind_is_documented_with_its_parameters(kind):
    params = row(f"`{kind}`")[1]
    assert re.findall(r"`(\w+)`", params) == list(DIST_PARAMS[kind])
    assert all(f"`{b}`" in TEXT for b in DIST_BOUNDS)


@pytest.mark.parametrize("pattern", list(ARRIVAL_KEYS))
def test_every_arrival_pattern_is_documented_with_its_keys(pattern):
    assert re.findall(r"`(\w+)`", row(f"`{pattern}`")[1]) == list(ARRIVAL_KEYS[pattern])


def test_every_fault_kind_and_key_is_documented():
    faults = TEXT.split("## `[[faults]]`")[1].split("\n## ")[0]
    for kind in FAULT_KINDS:
        assert f"| `{kind}` |" in faults
    for f in dataclasses.fields(FaultSpec):
        assert f"`{f.name}`" in faults or f.name == "kind"
