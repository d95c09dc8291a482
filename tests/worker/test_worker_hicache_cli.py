"""``smg-testbed worker`` with SGLang's HiCache flags: they reach ``WorkerConfig.hicache``, HiCache implies the
iteration-level engine, a storage backend shares one L3 among the command's workers (or the store service's, by its
URL), and bad values exit 2 with the reason."""

from __future__ import annotations

import json

import httpx
import pytest

from sim.engine.storage import L3Store
from sim.engine.types import HiCacheConfig
from sim.storage_service import store_app
from sim.worker.cli import build_parser, main, make_cores
from sim.worker.remote_storage import RemoteStorage
from testbed_common.procs import ThreadServer, free_port, python_module, running


def cores(*argv: str):
    return make_cores(build_parser().parse_args(list(argv)))


def test_without_the_flags_hicache_is_off_as_before():
    [core] = cores()
    assert core.config.hicache is None and core.storage is None and not core.iteration


def test_the_flags_reach_the_hicache_config_and_imply_the_iteration_engine():
    [core] = cores("--enable-hicache", "--hicache-ratio", "3.5", "--hicache-size", "12",
                   "--hicache-write-policy", "write_back", "--hicache-storage-prefetch-policy", "wait_complete",
                   "--hicache-pcie-bandwidth-gb-s", "45", "--hicache-storage-read-bandwidth-gb-s", "0.57",
                   "--hicache-storage-write-bandwidth-gb-s", "0.16", "--page-size", "64")
    assert core.config.engine == "iteration" and core.config.page_size == 64
    assert core.config.hicache == HiCacheConfig(ratio=3.5, size_gb=12.0, write_policy="write_back",
                                                prefetch_policy="wait_complete", pcie_bandwidth=45e9,
                                                storage_read_bandwidth=0.57e9, storage_write_bandwidth=0.16e9)
    assert core.storage is None  # no storage backend: no L3
    [default] = cores("--enable-hierarchical-cache")
    assert default.config.hicache == HiCacheConfig()


def test_a_storage_backend_without_a_url_is_one_store_shared_by_the_command_s_workers():
    a, b = cores("--enable-hierarchical-cache", "--count", "2", "--page-size", "64",
                 "--hicache-storage-backend", "mooncake")
    assert a.config.hicache.storage and b.config.hicache.storage
    assert isinstance(a.storage, L3Store) and a.storage is b.storage and a.storage.page_size == 64
    assert a.engine.storage is a.storage
    [none] = cores("--enable-hierarchical-cache", "--hicache-storage-backend", "")
    assert not none.config.hicache.storage and none.storage is None


def test_decode_offload_is_a_decode_worker_s_hicache_with_the_shared_store():
    [core] = cores("--disaggregation-mode", "decode", "--disaggregation-decode-enable-offload-kvcache",
                   "--hicache-storage-backend", "file")
    assert core.config.hicache.decode_offload and core.config.hicache.storage
    assert core.server_info()["disaggregation_decode_enable_offload_kvcache"] is True


def test_server_info_reports_the_hicache_args():
    [off] = cores()
    [on] = cores("--enable-hierarchical-cache", "--hicache-storage-backend", "x", "--hicache-write-policy",
                 "write_through_selective")
    assert off.server_info()["enable_hierarchical_cache"] is False
    assert off.server_info()["hicache_storage_backend"] is None
    info = on.server_info()
    assert info["enable_hierarchical_cache"] is True and info["hicache_storage_backend"] is not None
    assert info["hicache_write_policy"] == "write_through_selective"


@pytest.mark.parametrize(("argv", "reason"), [
    (["--enable-hierarchical-cache", "--hicache-ratio", "0"], "ratio"),
    (["--enable-hierarchical-cache", "--hicache-size", "-1"], "size"),
    (["--enable-hierarchical-cache", "--hicache-pcie-bandwidth-gb-s", "0"], "pcie_bandwidth"),
    (["--enable-hierarchical-cache", "--hicache-storage-read-bandwidth-gb-s", "-2"], "storage_read_bandwidth"),
    (["--enable-hierarchical-cache", "--hicache-write-policy", "write_around"], "invalid choice"),
    (["--enable-hierarchical-cache", "--hicache-storage-prefetch-policy", "never"], "invalid choice"),
    (["--enable-hierarchical-cache", "--engine", "arrival"], "iteration-level engine"),
    (["--disaggregation-decode-enable-offload-kvcache", "--hicache-storage-backend", "x"], "decode side"),
    (["--disaggregation-mode", "decode", "--disaggregation-decode-enable-offload-kvcache"],
     "hicache-storage-backend is provided"),
    (["--enable-hierarchical-cache", "--hicache-storage-backend-extra-config", '{"url": "http://127.0.0.1:1"}'],
     "needs --hicache-storage-backend"),
    (["--enable-hierarchical-cache", "--hicache-storage-backend", "x", "--hicache-storage-backend-extra-config",
      "{url"], "not JSON"),
    (["--enable-hierarchical-cache", "--hicache-storage-backend", "x", "--hicache-storage-backend-extra-config",
      '{"url": "http://10.0.0.1:80"}'], "loopback"),
    (["--enable-hierarchical-cache", "--hicache-storage-backend", "x", "--hicache-storage-backend-extra-config",
      '["http://127.0.0.1:80"]'], "url"),
])
def test_bad_hicache_flags_exit_2_with_the_reason(argv, reason, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert reason in capsys.readouterr().err


def _remote_args(url: str, page_size: int) -> list[str]:
    return ["--enable-hierarchical-cache", "--page-size", str(page_size), "--hicache-storage-backend", "mock",
            "--hicache-storage-backend-extra-config", json.dumps({"url": url})]


def test_the_store_service_s_url_gives_every_worker_the_remote_store():
    with ThreadServer(store_app(L3Store(64))) as store:
        a, b = cores("--count", "2", *_remote_args(store.url, 64))
        try:
            assert isinstance(a.storage, RemoteStorage) and a.storage is b.storage and a.storage.url == store.url
        finally:
            a.storage.close()


def test_a_store_that_does_not_answer_or_has_other_pages_fails_the_command(capsys):
    assert main(["--port", str(free_port()), *_remote_args(f"http://127.0.0.1:{free_port()}", 64)]) == 1
    assert "the L3 store at" in capsys.readouterr().err
    with ThreadServer(store_app(L3Store(16))) as store:
        assert main(["--port", str(free_port()), *_remote_args(store.url, 64)]) == 1
    assert "pages of 16 tokens" in capsys.readouterr().err


def test_a_worker_process_answers_with_its_tiers_over_the_store_service(tmp_path):
    with ThreadServer(store_app(L3Store(4))) as store:
        port = free_port()
        args = python_module("sim.worker", "--port", str(port), "--speedup", "100", *_remote_args(store.url, 4))
        body = {"input_ids": list(range(40)), "sampling_params": {"max_new_tokens": 4}}  # live time
        with (running(args, f"http://127.0.0.1:{port}/health", timeout=30, log_path=tmp_path / "w.log"),
              httpx.Client(timeout=30, trust_env=False) as client):
            r = client.post(f"http://127.0.0.1:{port}/generate", json=body)
            assert r.status_code == 200, r.text
            sim = r.json()["sim"]
            assert sim["cached_tokens_details"] == {"device": 0, "host": 0, "storage": 0}  # a cold worker
            meta = r.json()["meta_info"]
            assert meta["cached_tokens"] == 0 and meta["cached_tokens_details"] is None  # SGLang: none when 0
            assert client.get(f"http://127.0.0.1:{port}/server_info").json()["enable_hierarchical_cache"] is True
