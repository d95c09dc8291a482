"""Paired means same ring: every configuration of one scenario and seed gets the same worker URLs, and http runs
of one such block run one after the other instead of moving to another block."""

from __future__ import annotations

import time

import pytest

from sim.commands.common import console_for, run_many
from sim.executors import port_blocks, startable
from sim.runner import PolicyConfig, make_setup, public, run_setup
from sim.transports.pool import port_salt
from sim.workload.scenario import load_scenario

# --max-concurrent-requests: an smg flag the mock does not model, so it cannot move a key
PLAIN = PolicyConfig("consistent_hashing")
FLAGGED = PolicyConfig("consistent_hashing", None, ("--max-concurrent-requests", "64"))


def _placements(setup, transport):
    records = []
    row = run_setup(setup, transport, on_request=records.append)
    return {(r.session, r.turn, r.retry): r.worker for r in records}, row


@pytest.mark.parametrize("transport", ["direct", "http"])
def test_a_flag_that_cannot_move_a_key_leaves_every_key_on_its_worker(tiny, transport):
    scenario = load_scenario(str(tiny)).replace(sessions=12, workers=4)
    plain, flagged = (make_setup(scenario, pc, True) for pc in (PLAIN, FLAGGED))
    assert plain.label != flagged.label and port_salt(plain) == port_salt(flagged)
    (where_plain, row_plain), (where_flagged, row_flagged) = (_placements(s, transport) for s in (plain, flagged))
    assert len(set(where_plain.values())) > 1  # the keys are spread: the ring matters
    assert where_plain == where_flagged
    differ = {"label", "gateway_args"}
    assert {k: v for k, v in public(row_plain).items() if k not in differ} == \
        {k: v for k, v in public(row_flagged).items() if k not in differ}


def test_the_block_is_the_scenario_and_seed():
    scenario = load_scenario("default")
    a, b = make_setup(scenario, PLAIN, True), make_setup(scenario, PolicyConfig("manual", "random"), False)
    assert port_salt(a) == port_salt(b)
    assert port_salt(make_setup(scenario.replace(seed=1), PLAIN, True, 1)) != port_salt(a)
    assert port_salt(make_setup(scenario.replace(workers=3), PLAIN, True)) != port_salt(a)


def test_runs_of_one_block_start_one_at_a_time():
    blocks = ["s/0", "s/0", "s/1", None, "s/1", None]
    assert startable(range(6), blocks, set()) == [0, 2, 3, 5]
    assert startable([1, 4], blocks, {"s/1"}) == [1]
    assert port_blocks([make_setup(load_scenario("default"), PLAIN, True)], "direct") == [None]


def test_parallel_http_runs_of_one_block_wait_their_turn_not_another_block(tiny):
    """Two jobs, two configurations of one block: the second runs after the first on the same ports (had it run
    beside it, it would have waited ~60 s for them and then taken another block, hence another ring)."""
    scenario = load_scenario(str(tiny))
    setups = [make_setup(scenario, pc, True) for pc in (PLAIN, FLAGGED)]
    t0 = time.monotonic()
    rows = run_many(setups, "http", 2, console_for(quiet=True), show_progress=False)
    assert time.monotonic() - t0 < 40
    direct = [run_setup(s, "direct") for s in setups]
    assert [public(r) | {"transport": "-"} for r in rows] == [public(r) | {"transport": "-"} for r in direct]
