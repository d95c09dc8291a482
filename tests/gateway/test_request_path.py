"""The gateway's request path as a step machine: the effects it asks its driver for, in order, and what it does
with their results (a scripted driver stands in for HTTP and the worker cores)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mock_gateway import upstream
from mock_gateway.request_path import Attempt, Backoff, PollLoads, ProbeHealth, Send, request_path, run
from mock_gateway.testing import chat, make_core, sample, urls

W = urls(3)


class Script:
    """A driver answering from a script: each worker's status (None: connection refused; default 200), the health
    probes' answer, and a virtual finish for every answered attempt. Logs every effect."""

    def __init__(self, status: dict[str, int | None] | None = None, healthy: bool = True,
                 finish: float | None = None) -> None:
        self.status = status or {}
        self.healthy = healthy
        self.finish = finish
        self.effects: list[Any] = []

    def __call__(self, effect: Any) -> Any:
        self.effects.append(effect)
        if isinstance(effect, Send):
            url = effect.decision.url
            status = self.status.get(url, 200)
            return Attempt(status, (url, status), None if status is None else self.finish)
        if isinstance(effect, PollLoads):
            return [{"loads": [{"num_running_reqs": 0}]} for _ in effect.urls]
        if isinstance(effect, ProbeHealth):
            return [self.healthy] * len(effect.urls)
        return None

    def sends(self) -> list[str]:
        return [e.decision.url for e in self.effects if isinstance(e, Send)]

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.effects if isinstance(e, kind)]


def go(core, driver: Script, now: float = 0.0, virtual: bool = True, body: dict | None = None, seed: int = 0):
    steps = request_path(core, "chat", {}, body or chat(), now, virtual, random.Random(seed))
    return run(steps, driver)


QUIET = ("--policy", "round_robin", "--disable-load-monitoring", "--disable-worker-overload-protection")


def test_a_refused_attempt_is_retried_on_another_worker():
    core = make_core(*QUIET)
    first = core.select("chat", {}, chat()).url  # round robin: the next request goes to the following worker
    driver = Script({W[(W.index(first) + 1) % 3]: None})
    out = go(core, driver)
    failed, served = driver.sends()
    assert failed != served and out.status == 200 and out.response == (served, 200)
    assert sample(core, "smg_router_upstream_responses_total", router_type="http", status_code="500",
                  error_code="call_upstream_connection_failed") == 1
    assert sample(core, "smg_worker_retries_total", worker_type="regular", endpoint="chat") == 1
    assert all(core.registry.get(u).load == 0 for u in W)  # both tickets released


def test_a_retry_excludes_every_worker_that_failed_and_the_last_answer_stands_when_none_is_left():
    core = make_core(*QUIET)
    driver = Script(dict.fromkeys(W, 503))
    out = go(core, driver)
    assert sorted(driver.sends()) == W  # each worker tried once, then no worker is left to select
    assert isinstance(out, Attempt) and out.status == 503
    assert sample(core, "smg_worker_retries_total", worker_type="regular", endpoint="chat") == 3
    assert sample(core, "smg_worker_retries_exhausted_total", worker_type="regular", endpoint="chat") == 0


def test_a_request_no_worker_can_take_is_refused_503_without_a_send():
    core = make_core(*QUIET, "--health-failure-threshold", "1")
    for u in W:
        core.health_result(u, False, 0.0)
    driver = Script()
    out = go(core, driver)
    assert driver.sends() == []
    assert (out.url, out.status, out.error_code) == (None, 503, "no_available_workers")
    assert sample(core, "smg_router_upstream_responses_total", router_type="http", status_code="503",
                  error_code="no_available_workers") == 1


def test_a_final_answer_is_not_retried():
    core = make_core(*QUIET)
    driver = Script(dict.fromkeys(W, 400))
    out = go(core, driver)
    assert len(driver.sends()) == 1 and out.status == 400 and driver.of(Backoff) == []


def test_backoffs_come_between_attempts_drawn_from_the_jitter_and_observed():
    core = make_core(*QUIET, "--retry-max-retries", "3")
    driver = Script(dict.fromkeys(W, None))
    go(core, driver, seed=5)
    jitter = random.Random(5)
    expected = [upstream.backoff(a, core.config, jitter) for a in (1, 2)]
    assert [e.seconds for e in driver.of(Backoff)] == expected  # 3 attempts, a backoff before each retry
    kinds = [type(e).__name__ for e in driver.effects]
    assert kinds == ["Send", "Backoff", "Send", "Backoff", "Send"]
    assert sample(core, "smg_worker_retry_backoff_seconds_count", attempt="2") == 1
    assert sample(core, "smg_worker_retries_exhausted_total", worker_type="regular", endpoint="chat") == 1


def test_load_polls_and_health_rounds_are_asked_for_only_when_due():
    core = make_core("--policy", "least_load", "--load-monitor-interval", "10", "--health-check-interval-secs", "5")
    seen = []
    for t, virtual in ((0.0, True), (1.0, True), (6.0, False), (7.0, True), (8.0, True), (10.0, True)):
        driver = Script()
        go(core, driver, now=t, virtual=virtual)
        seen.append((t, [type(e).__name__ for e in driver.effects if not isinstance(e, Send)]))
    assert seen == [(0.0, ["PollLoads"]), (1.0, []), (6.0, []), (7.0, ["ProbeHealth"]), (8.0, []),
                    (10.0, ["PollLoads"])]  # health rounds on the virtual clock only


def test_poll_and_probe_results_reach_the_core_at_the_request_time():
    core = make_core(*QUIET, "--health-check-interval-secs", "1", "--health-failure-threshold", "1")
    driver = Script(healthy=False)
    out = go(core, driver, now=2.0)
    assert driver.of(ProbeHealth)[0].now == 2.0
    assert all(not core.registry.get(u).ready for u in W)  # the round marked them, before selection
    assert out.status == 503 and driver.sends() == []


def test_an_attempt_stays_in_flight_until_its_virtual_finish():
    core = make_core(*QUIET)
    out = go(core, Script(finish=4.0), now=1.0)
    url = out.response[0]
    assert core.registry.get(url).load == 1
    core.advance(4.0)
    assert core.registry.get(url).load == 0


def test_a_relayed_stream_is_finished_by_its_driver():
    core = make_core(*QUIET)
    steps = request_path(core, "chat", {}, chat(stream=True), 0.0, False, random.Random(0))
    send = next(steps)
    with pytest.raises(StopIteration) as done:
        steps.send(Attempt(200, "stream", relayed=True))
    assert done.value.value.response == "stream"
    assert core.registry.get(send.decision.url).load == 1  # still relaying
    core.finish(send.ticket)
    assert core.registry.get(send.decision.url).load == 0


def test_a_driver_that_fails_mid_attempt_leaves_nothing_in_flight():
    core = make_core(*QUIET)
    steps = request_path(core, "chat", {}, chat(), 0.0, False, random.Random(0))
    send = next(steps)
    assert core.registry.get(send.decision.url).load == 1
    steps.close()
    assert core.registry.get(send.decision.url).load == 0


def test_live_time_settles_on_the_drivers_clock():
    core = make_core(*QUIET)
    steps = request_path(core, "chat", {}, chat(), 1.0, False, random.Random(0))
    next(steps)
    with pytest.raises(StopIteration):
        steps.send(Attempt(200, None, now=3.5))
    assert core.clock == 3.5
