"""The L3 store service (``smg-testbed l3-store``) and ``RemoteStorage``: a page is readable only from its ready time,
the remote store answers every call as the in-process ``L3Store`` does, bad input is a JSON 400, loopback only."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.commands.l3_store import main as l3_store_main
from sim.engine.storage import L3Store, page_keys
from sim.storage_service import store_app
from sim.worker.remote_storage import RemoteStorage, StoreUnavailable
from testbed_common.procs import ThreadServer, free_port, python_module, running


@pytest.fixture
def served():
    with ThreadServer(store_app(L3Store(4))) as server:
        yield server


def test_a_page_is_readable_only_from_its_ready_time(served):
    remote = RemoteStorage(served.url)
    try:
        keys = page_keys(list(range(12)), 4)
        assert remote.page_size == 4 and remote.capacity_pages is None
        assert remote.match(keys, 100.0) == 0
        assert remote.write(keys[:2], ready=5.0) == 2
        assert [remote.match(keys, t) for t in (4.999, 5.0, 9.0)] == [0, 2, 2]
        assert remote.write(keys, ready=3.0) == 1  # two were there; an earlier write makes them readable earlier
        assert remote.match(keys, 3.0) == 3
        assert remote.match(keys, math.inf) == 3  # held at all (SGLang's batch_exists)
    finally:
        remote.close()


ops = st.lists(st.tuples(st.sampled_from(["match", "write"]), st.integers(0, 5), st.integers(0, 6),
                         st.integers(0, 20).map(float) | st.just(math.inf)), max_size=30)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops, st.sampled_from([None, 3, 8]))
def test_the_remote_store_answers_every_call_as_the_in_process_store(calls, capacity):
    prompts = [page_keys([p] * 4 + list(range(4 * 6)), 4) for p in range(6)]  # six chains of seven pages
    local = L3Store(4, capacity)
    with ThreadServer(store_app(L3Store(4, capacity))) as server:
        remote = RemoteStorage(server.url)
        try:
            for op, chain, n, t in calls:
                keys = prompts[chain][:n]
                if op == "write" and t == math.inf:
                    continue  # a write is ready at a finite time
                assert getattr(remote, op)(keys, t) == getattr(local, op)(keys, t)
        finally:
            remote.close()


@pytest.mark.parametrize(("path", "content"), [
    ("/match", b"{not json"), ("/match", b"[1, 2]"), ("/match", b'{"keys": "ab", "now": 1}'),
    ("/match", b'{"keys": ["zz"], "now": 1}'), ("/match", b'{"keys": [1], "now": 1}'),
    ("/match", b'{"keys": ["ab"]}'), ("/write", b'{"keys": ["ab"], "ready": "soon"}'),
    ("/write", b'{"keys": ["ab"], "ready": Infinity}'), ("/write", b'{"keys": ["ab"], "ready": true}'),
])
def test_bad_input_is_a_json_400_and_changes_nothing(served, path, content):
    with httpx.Client(base_url=served.url, trust_env=False) as client:
        r = client.post(path, content=content)
        assert r.status_code == 400 and r.json()["error"]
        assert client.post("/match", json={"keys": ["ab"], "now": 1e9}).json() == {"matched": 0}


def test_unknown_routes_and_methods_are_json_errors(served):
    with httpx.Client(base_url=served.url, trust_env=False) as client:
        assert client.get("/nowhere").status_code == 404 and "error" in client.get("/nowhere").json()
        r = client.get("/match")
        assert r.status_code == 405 and "error" in r.json()
        assert client.get("/health").json() == {"status": "ok"}


async def _info_from(client: tuple[str, int]) -> httpx.Response:
    transport = httpx.ASGITransport(app=store_app(L3Store(4)), client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://store") as c:
        return await c.get("/info")


def test_only_loopback_clients_are_answered():
    r = asyncio.run(_info_from(("192.0.2.1", 1234)))  # a TEST-NET address
    assert r.status_code == 403 and "loopback" in r.json()["error"]
    assert asyncio.run(_info_from(("127.0.0.1", 1234))).json() == {"page_size": 4, "capacity_pages": None}


def test_a_store_that_does_not_answer_is_an_error_that_names_it():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable, match=url):
        RemoteStorage(url)


@pytest.mark.parametrize("argv", [["--page-size", "0"], ["--capacity-tokens", "-1"], ["--port", "0"],
                                  ["--page-size", "64", "--capacity-tokens", "63"]])
def test_bad_store_flags_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        l3_store_main(argv)
    assert e.value.code == 2


def test_the_l3_store_command_serves_on_loopback(tmp_path):
    port = free_port()
    args = python_module("sim.cli", "l3-store", "--port", str(port), "--page-size", "64", "--capacity-tokens", "640")
    with running(args, f"http://127.0.0.1:{port}/health", timeout=30, log_path=tmp_path / "store.log"):
        remote = RemoteStorage(f"http://127.0.0.1:{port}")
        try:
            assert (remote.page_size, remote.capacity_pages) == (64, 10)
        finally:
            remote.close()
