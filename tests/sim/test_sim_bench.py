"""``benchmarks/sim_bench.py``'s no-op chain is a chain: every request crosses all three servers.

Until stop 12 its endpoint's ``Request`` annotation did not resolve, every call was a 422 from the first
server, and nothing noticed: the "floor" measured one failing hop. No wall time is asserted here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("sim_bench", Path(__file__).parents[2] / "benchmarks" / "sim_bench.py")
assert _spec is not None and _spec.loader is not None
sim_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_bench)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def test_the_noop_chain_forwards_every_request_through_three_servers() -> None:
    r = sim_bench.measure_noop(12, warmup=3)
    assert r["requests"] == 12
    assert r["hits"] == [15, 15, 15]
    assert r["requests_per_second"] > 0


def test_the_sized_noop_chain_carries_each_hops_request_size() -> None:
    sizes = [(1500, 700), (2600, 900), (3100, 1200)]
    r = sim_bench.measure_noop(5, sizes, warmup=1)
    assert r["hits"] == [6, 6, 6]
    assert r["received"] == [1500, 2600, 3100]


def test_body_is_json_of_the_exact_size() -> None:
    import json

    for size in (8, 9, 100, 28_117):
        body = sim_bench.sized_body(size)
        assert len(body) == size
        assert json.loads(body) == {"x": "a" * (size - 8)}


def test_the_json_floor_parses_and_writes_each_hops_sampled_bodies():
    import json

    def body(**kw):
        return json.dumps(kw, separators=(",", ":"))

    bodies = {h: [[body(hop=h, i=i, ids=list(range(40 * k))), body(answer=h, i=i)] for i in range(3)]
              for k, h in enumerate(sim_bench.HOPS, 1)}
    bodies[sim_bench.VIEWS] = [["", body(records=[{"turn": t} for t in range(5)])]]
    r = sim_bench.measure_noop(8, warmup=1, replay={"bodies": bodies, "requests_per_view": 3})
    views = 9 // 3
    assert r["what"] == "noop-json"
    assert r["hits"] == [9 + views, 9, 9]  # the front server also served the record views
    # each server got a request of its own hop, re-encoded from the parsed sample: the same bytes
    assert r["received"][1] in {len(b[0]) for b in bodies[sim_bench.HOPS[1]]}
    assert r["received"][2] in {len(b[0]) for b in bodies[sim_bench.HOPS[2]]}


def test_the_traffic_counter_counts_requests_and_body_bytes_per_hop():
    traffic = sim_bench.TrafficCounter()
    traffic("test hop", b"12345", b"answer")
    traffic("test hop", b"", b"no")
    assert traffic.counts == {"test hop": [2, 5, 8]}
    assert traffic.summary() == {"test hop": {"requests": 2, "request_bytes": 2.5, "response_bytes": 4.0}}
    assert traffic.requests("test hop") == 2 and traffic.requests("never seen") == 0
    assert traffic.samples == {}  # sampling is off by default


def test_the_traffic_counter_keeps_a_uniform_sample_of_the_exchanges():
    traffic = sim_bench.TrafficCounter(sample_size=2)
    bodies = [b"a", b"bb", b"ccc", b"dddd", b"eeeee", b"ffffff"]
    for body in bodies:
        traffic("sampled hop", body, body.upper())
        if body == b"bb":
            assert [req for req, _ in traffic.samples["sampled hop"]] == [b"a", b"bb"]  # room left
    assert traffic.counts["sampled hop"][:2] == [6, 21]
    kept = traffic.samples["sampled hop"]
    assert len(kept) == 2 and len({req for req, _ in kept}) == 2 and {req for req, _ in kept} <= set(bodies)
    assert all(resp == req.upper() for req, resp in kept)  # with their answers


def test_the_pools_count_into_the_traffic_counter_once_it_is_installed():
    from testbed_common import http_client
    from testbed_common.procs import ThreadServer

    async def echo(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = (await receive()).get("body", b"")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body * 2})

    traffic = sim_bench.TrafficCounter()
    with ThreadServer(echo) as server, http_client.Pool(timeout=5.0, label=sim_bench.HOPS[0]) as pool:
        pool.count(pool.fetch("POST", server.url + "/x", None, b"before"))
        http_client.set_traffic_observer(traffic)
        try:
            pool.count(pool.fetch("POST", server.url + "/x", None, b"12345"))
        finally:
            http_client.set_traffic_observer(None)
    assert traffic.counts == {sim_bench.HOPS[0]: [1, 5, 10]}


def test_repeated_rounds_are_summarized_by_their_median_and_range(capsys):
    rounds = [{"http / no-op chain (tiny bodies)": r, sim_bench.DIRECT_GOAL: r + 0.1,
               f"http {sim_bench.RATE}": 150.0 + 10 * i} for i, r in enumerate([0.42, 0.55, 0.45])]
    sim_bench.summarize(rounds)
    out = capsys.readouterr().out
    assert "over 3 rounds" in out
    assert "http / no-op chain (tiny bodies): 0.45 (0.42-0.55)" in out
    assert f"{sim_bench.DIRECT_GOAL}: 0.55 (0.52-0.65)" in out
    assert f"http {sim_bench.RATE}: 160 (150-170)" in out


@pytest.mark.skipif(__import__("shutil").which("valgrind") is None, reason="valgrind is not installed")
def test_the_instruction_count_sees_a_run_and_grows_with_its_requests() -> None:
    """``benchmarks/instr_bench.py`` counts a real ``direct`` run under cachegrind, the same count every time
    (no figure is asserted)."""
    path = Path(__file__).parents[2] / "benchmarks" / "instr_bench.py"
    spec = importlib.util.spec_from_file_location("instr_bench", path)
    assert spec is not None and spec.loader is not None
    instr_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(instr_bench)
    small, again, big = (instr_bench.count(n, instr_bench.ROOT) for n in (1, 1, 3))
    assert 0 < small[1] < big[1] and 0 < small[0] < big[0]
    assert again[1] == small[1] and abs(again[0] - small[0]) < small[0] * 1e-4
