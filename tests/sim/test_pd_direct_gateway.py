"""``direct``'s gateway in PD mode (``DirectGateway.steps``): the prefill worker is asked first, then the decode
worker, both with the same bootstrap fields; while both engines hold the request one ``HoldPair`` is yielded; the
decode's answer is the request's."""

from __future__ import annotations

from typing import Any

from mock_gateway.testing import chat, sample
from session_server.upstream import UpstreamRequest
from sim.transports.direct import DirectGateway, Hold, HoldPair
from sim.worker.reply import Reply as WorkerReply

PREFILL, DECODE = "http://127.0.0.1:18301", "http://127.0.0.1:18302"
ARGV = ["--pd-disaggregation", "--prefill", PREFILL, "9000", "--decode", DECODE, "--policy", "manual",
        "--disable-health-check", "--seed", "3"]


class StubWorker:
    """A worker core that records what it is asked, in one shared order, and holds or answers at once."""

    def __init__(self, name: str, calls: list[str], held: bool) -> None:
        self.model_name, self.name, self.calls, self.held = "fake-model", name, calls, held
        self.bodies: list[dict[str, Any]] = []

    def infer(self, endpoint: str, payload: dict[str, Any], known_messages: int = 0) -> WorkerReply:
        self.calls.append(self.name)
        self.bodies.append(payload)
        if self.held:
            return WorkerReply(200, pending=len(self.bodies))
        return self.answer()

    def answer(self) -> WorkerReply:
        return WorkerReply(200, {"worker": self.name},
                           headers={"x-sim-first-token": "3.0", "x-sim-finish": "4.0" if self.name == "d" else "2.0"})

    def loads(self, now: float) -> None:
        return None

    def health(self) -> tuple[int, dict]:
        return 200, {}


def gateway(held: bool, *flags: str) -> tuple[DirectGateway, StubWorker, StubWorker, list[str]]:
    calls: list[str] = []
    p, d = StubWorker("p", calls, held), StubWorker("d", calls, held)
    return DirectGateway([*ARGV, *flags], {PREFILL: p, DECODE: d}), p, d, calls


def request() -> UpstreamRequest:
    return UpstreamRequest("POST", "v1/chat/completions", {"x-smg-routing-key": "s"}, json=chat(sim_time=1.0))


def test_the_prefill_is_asked_first_and_both_bodies_carry_the_same_bootstrap_fields():
    gw, p, d, calls = gateway(held=False)
    resp = gw(request())
    assert resp.status == 200 and resp.json()["worker"] == "d"
    assert calls == ["p", "d"]
    fields = {k: p.bodies[0][k] for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room")}
    assert fields == {k: d.bodies[0][k] for k in fields}
    assert fields["bootstrap_host"] == "127.0.0.1" and fields["bootstrap_port"] == 9000
    assert [w.worker_type for w in gw.core.registry] == ["prefill", "decode"]
    labels = {"backend_type": "pd", "model": "fake-model", "runtime": "sglang"}
    assert sample(gw.core, "smg_pd_prefill_duration_seconds_sum", **labels) == 1.0
    assert sample(gw.core, "smg_pd_ttft_seconds_sum", **labels) == 3.0


def test_both_held_legs_are_one_hold_pair_answered_with_both_replies():
    gw, p, d, _ = gateway(held=True)
    steps = gw.steps(request())
    held = next(steps)
    assert held == HoldPair(Hold(PREFILL, 1), Hold(DECODE, 1))
    assert [w.load for w in gw.core.registry] == [1, 1]
    try:
        steps.send((p.answer(), d.answer()))
    except StopIteration as done:
        assert done.value.json()["worker"] == "d"
    else:
        raise AssertionError("the request path did not end with the pair's answers")
    gw.core.advance(4.0)
    assert [w.load for w in gw.core.registry] == [0, 0]


def test_a_dropped_leg_is_smgs_502():
    gw, p, _, _ = gateway(True, "--disable-retries")
    steps = gw.steps(request())
    next(steps)
    try:
        steps.send((p.answer(), None))
    except StopIteration as done:
        assert done.value.status == 502
    else:
        raise AssertionError("the request path did not end")
