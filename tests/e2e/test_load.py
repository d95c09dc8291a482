"""Bounded load on loopback, and the session server's limits holding under concurrency.

The load test drives ``benchmarks/load_bench.py``'s functions with fewer sessions than the benchmark's 1,000
(CI shares 2 cores with everything else): two rounds of ``SESSIONS`` concurrent agent sessions of 5 turns each
through session server -> mock gateway -> 2 mock workers, each server in its own process, live time at 1000x.
Every turn must succeed; afterwards no session is left, no request is left in flight at the gateway, and
the servers' memory is bounded: a peak under ``PEAK_MIB`` each, and a second identical round does not keep
growing what the first one left resident.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import httpx
import pytest

from session_server.app import ServerConfig, create_app
from testbed_common.procs import ThreadServer

SESSIONS = 60
TURNS = 5
PEAK_MIB = 300  # each server idles at ~60-70 MiB

_spec = importlib.util.spec_from_file_location("load_bench", Path(__file__).parents[2] / "benchmarks" / "load_bench.py")
assert _spec and _spec.loader
load_bench = importlib.util.module_from_spec(_spec)
sys.modules["load_bench"] = load_bench
_spec.loader.exec_module(load_bench)

MIB = 2**20


@pytest.mark.timeout(240)
def test_concurrent_sessions_finish_without_errors_in_bounded_memory(tmp_path: Path) -> None:
    with load_bench.loopback_stack(workers=2, speedup=1000.0, policy="manual", log_dir=tmp_path) as stack:
        idle = stack.memory()
        rounds = []
        for seed in (1, 2):
            res = asyncio.run(load_bench.run_load(stack.session_url, SESSIONS, TURNS, max_tokens=8, seed=seed))
            assert res.errors == [], res.errors[:5]
            assert res.ok_turns == SESSIONS * TURNS
            rounds.append(stack.memory())
        with httpx.Client(trust_env=False, timeout=10) as c:
            workers = c.get(f"{stack.gateway_url}/workers").json()["workers"]
            assert [w["load"] for w in workers] == [0, 0], "requests left in flight at the gateway"
        for name in stack.processes:
            assert rounds[1][name]["hwm"] < PEAK_MIB * MIB, (name, rounds[1][name])
            grown_first = rounds[0][name]["rss"] - idle[name]["rss"]
            grown_second = rounds[1][name]["rss"] - rounds[0][name]["rss"]
            assert grown_second <= max(8 * MIB, grown_first // 2), (name, idle[name], rounds)
        for log in tmp_path.glob("*.log"):
            assert "Traceback" not in log.read_text(errors="replace"), log.name


# --- session server limits under concurrency ---------------------------------------------------------------


async def _create_many(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as c:
        return [r.status_code for r in await asyncio.gather(*(c.post("/sessions") for _ in range(n)))]


def test_session_cap_holds_under_concurrent_creates() -> None:
    app = create_app(ServerConfig(router_url="http://127.0.0.1:9", max_sessions=20))
    with ThreadServer(app) as ss:
        statuses = asyncio.run(_create_many(ss.url, 50))
        assert sorted(statuses) == [200] * 20 + [503] * 30
        with httpx.Client(base_url=ss.url, trust_env=False, timeout=10) as c:
            r = c.post("/sessions")
            assert r.status_code == 503 and "max_sessions=20" in r.json()["error"]
            sid = next(iter(app.state.core.sessions))
            assert c.delete(f"/sessions/{sid}").status_code == 204
            assert c.post("/sessions").status_code == 200  # a freed slot is usable again


def test_idle_sessions_expire_and_free_their_slots() -> None:
    clock = [1000.0]
    app = create_app(
        ServerConfig(router_url="http://127.0.0.1:9", max_sessions=3, idle_ttl=60.0), clock=lambda: clock[0]
    )
    with ThreadServer(app) as ss, httpx.Client(base_url=ss.url, trust_env=False, timeout=10) as c:
        old = [c.post("/sessions").json()["session_id"] for _ in range(3)]
        assert c.post("/sessions").status_code == 503
        clock[0] += 61.0
        new = c.post("/sessions")
        assert new.status_code == 200  # the three idle sessions were dropped on this create
        for sid in old:
            assert c.get(f"/sessions/{sid}").status_code == 404
        assert c.get(f"/sessions/{new.json()['session_id']}").status_code == 200


def test_load_bench_reads_process_memory() -> None:
    """The RSS probe reads this very process: resident memory is positive and never above its peak."""
    m = load_bench.proc_memory(os.getpid())
    assert 0 < m["rss"] <= m["hwm"]
