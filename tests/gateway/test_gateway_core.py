"""GatewayCore: virtual-time accounting, load polls on the clock, validation errors, overload protection, seeds."""

import pytest

from mock_gateway.testing import chat, make_core, sample, urls

W = urls(3)


def route(core, endpoint, headers, body, now):
    """One attempt on the virtual clock: advance, select, and count it in flight if a worker was chosen."""
    core.advance(now)
    d = core.select(endpoint, headers, body, now)
    return d, (core.begin(d) if d.url is not None else None)


def test_virtual_finish_keeps_a_request_in_flight_until_the_clock_passes_it():
    core = make_core("--policy", "manual", "--assignment-mode", "min_load")
    core.advance(1.0)
    d = core.select("chat", {"x-smg-routing-key": "k"}, chat(), now=1.0)
    t = core.begin(d)
    core.finish(t, virtual_finish=5.0)
    assert core.registry.get(d.url).load == 1
    assert core.registry.get(d.url).key_load == {"k": 1}
    assert core.advance(4.99) == 0 and core.registry.get(d.url).load == 1
    assert core.advance(5.0) == 1 and core.registry.get(d.url).load == 0
    assert core.registry.get(d.url).key_load == {}
    assert sample(core, "smg_worker_requests_active", worker=d.url) == 0


def test_a_finish_already_past_releases_at_once():
    core = make_core("--policy", "round_robin")
    core.advance(10.0)
    t = core.begin(core.select("chat", {}, chat()))
    core.finish(t, virtual_finish=3.0)
    assert core.registry.get(t.url).load == 0
    core.finish(t)  # idempotent
    assert core.registry.get(t.url).load == 0


def test_load_polls_are_due_every_interval_on_the_clock():
    core = make_core("--policy", "least_load", "--load-monitor-interval", "10")
    assert core.due_polls(0.0) == W
    assert core.due_polls(5.0) == []
    assert core.due_polls(10.0) == W
    assert core.due_polls(19.0) == []


def test_disable_load_monitoring_polls_only_when_something_needs_loads():
    quiet = ["--disable-load-monitoring", "--disable-worker-overload-protection"]
    assert make_core("--policy", "round_robin", *quiet).due_polls(0.0) == []
    assert make_core("--policy", "least_load", *quiet).due_polls(0.0) == W
    assert make_core("--policy", "round_robin", "--disable-load-monitoring").due_polls(0.0) == W


def test_route_counts_in_flight_and_metrics():
    core = make_core("--policy", "round_robin")
    d, t = route(core, "chat", {}, chat(), now=0.5)
    assert t is not None and core.inflight[t.id] is t
    assert sample(core, "smg_worker_requests_total", worker=d.url, model="fake-model") == 1
    assert (
        sample(
            core,
            "smg_worker_selection_total",
            worker_type="regular",
            connection_mode="http",
            model="fake-model",
            policy="round_robin",
        )
        == 1
    )
    assert (
        sample(
            core,
            "smg_router_requests_total",
            router_type="http",
            backend_type="regular",
            connection_mode="http",
            model="fake-model",
            endpoint="chat",
            streaming="false",
        )
        == 1
    )


MSG = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "code", "param"),
    [
        ("chat", [1, 2], 400, "invalid_type", None),
        ("chat", {"messages": MSG}, 400, "missing_required_parameter", "model"),
        ("chat", {"model": 5, "messages": MSG}, 400, "invalid_type", "model"),
        ("chat", {"model": "fake-model", "messages": "x"}, 400, "invalid_type", "messages"),
        ("chat", {"model": "fake-model", "messages": []}, 400, "empty_array", "messages"),
        (
            "chat",
            {"model": "fake-model", "messages": [{"role": "user"}]},
            400,
            "missing_required_parameter",
            "messages[0].content",
        ),
        (
            "chat",
            {"model": "fake-model", "messages": [{"content": "x"}]},
            400,
            "missing_required_parameter",
            "messages[0].role",
        ),
        (
            "chat",
            {"model": "fake-model", "messages": [{"role": "bogus", "content": "x"}]},
            400,
            "invalid_value",
            "messages[0].role",
        ),
        (
            "chat",
            {"model": "fake-model", "messages": [{"role": {}, "content": "x"}]},
            400,
            "invalid_type",
            "messages[0].role",
        ),
        (
            "chat",
            {"model": "fake-model", "messages": [{"role": [], "content": "x"}]},
            400,
            "invalid_type",
            "messages[0].role",
        ),
        (
            "chat",
            {"model": "fake-model", "messages": [{"role": "user", "content": 1}]},
            400,
            "invalid_type",
            "messages[0].content",
        ),
        ("chat", {"model": "fake-model", "messages": MSG, "stream": "yes"}, 400, "invalid_type", "stream"),
        ("chat", {"model": "fake-model", "messages": MSG, "max_tokens": "3"}, 400, "invalid_type", "max_tokens"),
        (
            "chat",
            {"model": "fake-model", "messages": MSG, "max_tokens": -1},
            400,
            "integer_below_min_value",
            "max_tokens",
        ),
        ("completions", {"model": "fake-model"}, 400, "missing_required_parameter", "prompt"),
        ("completions", {"model": "fake-model", "prompt": []}, 400, "prompt_empty", "prompt"),
        ("generate", {"text": 5}, 422, "invalid_type", "text"),
        ("generate", {"input_ids": "x"}, 422, "invalid_type", "input_ids"),
        ("generate", {"input_ids": ["a"]}, 422, "invalid_type", "input_ids"),
        ("generate", {"input_ids": [2**40]}, 422, "invalid_type", "input_ids"),
    ],
)
def test_bad_bodies_get_smgs_4xx(endpoint, body, status, code, param):
    core = make_core("--policy", "round_robin")
    d = core.select(endpoint, {}, body)
    assert (d.url, d.status, d.error_code, d.param) == (None, status, code, param)


def test_acceptable_edge_bodies_route():
    core = make_core("--policy", "round_robin")
    assert core.select("generate", {}, {}).url is not None
    assert core.select("completions", {}, {"model": "fake-model", "prompt": ""}).url is not None


def tool_chat(**tool) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "x"}, {"role": "tool", **tool}]}


@pytest.mark.parametrize(
    ("tool", "code", "param", "message_end"),
    [  # as smg 1.13.0 answered (docs/conformance.md); its messages end with " at line L column C"
        ({"content": "r"}, "missing_required_parameter", "messages[1].tool_call_id", "missing field `tool_call_id`"),
        ({"content": "r", "tool_call_id": None}, "invalid_type", "messages[1]", "type: null, expected a string"),
        ({"content": "r", "tool_call_id": 5}, "invalid_type", "messages[1]", "integer `5`, expected a string"),
        ({"content": "r", "tool_call_id": True}, "invalid_type", "messages[1]", "boolean `true`, expected a string"),
        ({"content": "r", "tool_call_id": ["a"]}, "invalid_type", "messages[1]", "sequence, expected a string"),
        ({"content": "r", "tool_call_id": {}}, "invalid_type", "messages[1]", "map, expected a string"),
        ({"tool_call_id": "c"}, "missing_required_parameter", "messages[1].content", "missing field `content`"),
        ({}, "missing_required_parameter", "messages[1].content", "missing field `content`"),  # content first
        ({"content": None, "tool_call_id": "c"}, "invalid_type", "messages[1]", "untagged enum MessageContent"),
    ],
)
def test_tool_message_needs_content_and_a_string_tool_call_id(tool, code, param, message_end):
    d = make_core("--policy", "round_robin").select("chat", {}, tool_chat(**tool))
    assert (d.url, d.status, d.error_code, d.param) == (None, 400, code, param)
    assert d.message.startswith("Invalid JSON data: Failed to deserialize the JSON body into the target type: ")
    assert d.message.endswith(message_end)


@pytest.mark.parametrize("tool_call_id", ["", "call_1"])
def test_tool_message_with_a_string_id_routes(tool_call_id):
    core = make_core("--policy", "round_robin")
    assert core.select("chat", {}, tool_chat(content="r", tool_call_id=tool_call_id)).url is not None
    assert core.select("chat", {}, tool_chat(content=[], tool_call_id=tool_call_id)).url is not None


def test_unknown_model_is_404_and_generate_without_model_routes():
    core = make_core("--policy", "round_robin")
    d = core.select("chat", {}, chat(model="nope"))
    assert (d.status, d.error_code) == (404, "model_not_found")
    d = core.select("generate", {}, {"text": "hi"})
    assert d.url in W and d.model == "unknown"


def test_overload_protection_leaves_overloaded_workers_out():
    core = make_core("--policy", "round_robin")
    core.record_load(W[0], {"loads": [{"num_waiting_reqs": 8}]}, 0.0)
    core.record_load(W[1], {"loads": [{"token_usage": 0.8}]}, 0.0)
    assert {core.select("chat", {}, chat()).url for _ in range(6)} == {W[2]}
    core.record_load(W[2], {"loads": [{"num_waiting_reqs": 9}]}, 0.0)
    d = core.select("chat", {}, chat())
    assert d.url in W and d.branch == "overload_fallback"
    assert sample(core, "smg_worker_overload_fallback_total", stage="selection") == 1


def test_overload_shed_and_disable():
    core = make_core("--policy", "round_robin", "--worker-overload-shed", workers=1)
    core.record_load(W[0], {"loads": [{"num_waiting_reqs": 8}]}, 0.0)
    d = core.select("chat", {}, chat())
    assert (d.status, d.error_code) == (503, "worker_overload_protection_shed")
    core = make_core("--policy", "round_robin", "--disable-worker-overload-protection", workers=1)
    core.record_load(W[0], {"loads": [{"num_waiting_reqs": 80}]}, 0.0)
    assert core.select("chat", {}, chat()).url == W[0]


def test_circuit_breaker_opens_half_opens_and_closes():
    core = make_core(
        "--policy",
        "round_robin",
        "--cb-failure-threshold",
        "2",
        "--cb-timeout-duration-secs",
        "5",
        "--cb-success-threshold",
        "1",
        workers=2,
    )
    core.record_outcome(W[0], False, 0.0)
    core.record_outcome(W[0], False, 0.0)
    assert {core.select("chat", {}, chat()).url for _ in range(4)} == {W[1]}
    assert sample(core, "smg_worker_cb_state", worker=W[0]) == 1
    core.breaker_tick(5.0)
    assert sample(core, "smg_worker_cb_state", worker=W[0]) == 2
    core.record_outcome(W[0], True, 6.0)
    assert sample(core, "smg_worker_cb_state", worker=W[0]) == 0
    assert sample(core, "smg_worker_cb_transitions_total", worker=W[0], **{"from": "half_open", "to": "closed"}) == 1


def test_health_transitions_ready_not_ready_failed_ready():
    core = make_core("--policy", "round_robin", workers=1)
    w = core.registry.get(W[0])
    for i in range(3):
        core.health_result(W[0], False, i)
    assert w.status == "not_ready" and sample(core, "smg_worker_health", worker=W[0]) == 0
    for i in range(6):
        core.health_result(W[0], False, i)
    assert w.status == "failed"
    core.health_result(W[0], True, 10)
    assert w.status == "failed"
    core.health_result(W[0], True, 11)
    assert w.ready and sample(core, "smg_worker_health", worker=W[0]) == 1


@pytest.mark.parametrize("policy", ["random", "cache_aware", "manual", "power_of_two", "consistent_hashing"])
def test_same_seed_same_decisions(policy):
    def run(seed):
        core = make_core("--policy", policy, seed=seed)
        out = []
        for i in range(40):
            d, t = route(
                core,
                "chat", {"x-smg-routing-key": f"k{i % 7}"} if i % 3 else {}, chat(f"{i % 5} prompt"), now=i * 0.1
            )
            core.finish(t, virtual_finish=i * 0.1 + 0.35)
            out.append((d.url, d.branch))
        return out

    assert run(3) == run(3)


from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

events = st.lists(
    st.tuples(
        st.sampled_from(["health", "outcome", "load", "tick", "remove", "add"]),
        st.integers(0, 2),
        st.booleans(),
        st.integers(0, 12),
        st.floats(0.0, 1.0),
    ),
    max_size=40,
)


@given(events)
@example([("load", 0, True, 12, 0.9), ("remove", 0, True, 0, 0.0), ("add", 0, True, 0, 0.0)])
@example([("health", 1, False, 0, 0.0), ("remove", 1, True, 0, 0.0), ("add", 1, True, 0, 0.0)])
@example([("outcome", 2, False, 0, 0.0), ("outcome", 2, False, 0, 0.0), ("tick", 0, True, 0, 0.0),
          ("tick", 0, True, 0, 0.0), ("tick", 0, True, 0, 0.0), ("outcome", 2, True, 0, 0.0)])
def test_the_candidate_workers_are_always_the_ready_closed_not_overloaded_ones(evs):
    """``available`` and overload protection skip their per-worker checks while the sets kept by health,
    breaker and load-report events say nothing is out; under any sequence of those events (and workers
    leaving and coming back) both give what checking every worker gives."""
    core = make_core("--policy", "round_robin", "--cb-failure-threshold", "2", "--cb-timeout-duration-secs", "3",
                     "--cb-success-threshold", "1", "--health-failure-threshold", "1",
                     "--health-success-threshold", "1")
    cfg, now = core.config, 0.0
    for kind, i, ok, waiting, usage in evs:
        now += 1.0
        url = W[i]
        if kind == "health":
            core.health_result(url, ok, now)
        elif kind == "outcome":
            core.record_outcome(url, ok, now)
        elif kind == "load":
            core.record_load(url, {"loads": [{"num_waiting_reqs": waiting, "token_usage": usage}]}, now)
        elif kind == "tick":
            core.advance(now)
        elif kind == "remove":
            core.remove_worker(url)
        else:
            core.add_worker(url, "fake-model")
        every = [w for w in core.registry.of_model("fake-model")
                 if w.status == "ready" and (w.breaker.state != "open" or not w.breaker.enabled)]
        assert core.available("fake-model") == every
        over = {w.url for w in core.registry.values()
                if w.overloaded(cfg.worker_overload_waiting_requests, cfg.worker_overload_token_usage)}
        assert core._overloaded == over
        d = core.select("chat", {}, chat(), now=now)
        fine = [w for w in every if w.url not in over]
        if fine:
            assert d.url in {w.url for w in fine} and d.branch != "overload_fallback"
        elif every:
            assert d.branch == "overload_fallback"
        else:
            assert d.url is None

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
fields = st.sampled_from(
    ["model", "messages", "prompt", "text", "input_ids", "stream", "max_tokens", "rid", "sampling_params", "sim_time"]
)
bodies = st.dictionaries(fields, json_values, max_size=5) | json_values
message_keys = st.sampled_from(["role", "content", "name", "tool_call_id"])
messages = st.lists(st.dictionaries(message_keys, json_values, max_size=3), max_size=3)


@given(
    st.sampled_from(["chat", "completions", "generate"]),
    bodies,
    messages,
    st.sampled_from(["manual", "cache_aware", "consistent_hashing", "prefix_hash", "least_load"]),
)
def test_any_json_body_gets_a_decision_never_an_exception(endpoint, body, msgs, policy):
    core = make_core("--policy", policy, "--routing-key-override")
    if isinstance(body, dict) and endpoint == "chat" and "messages" not in body:
        body = {**body, "model": "fake-model", "messages": msgs}
    d = core.select(endpoint, {"x-smg-routing-key": "k"}, body)
    assert (d.url is not None) == (d.status == 200)
    assert d.status in (200, 400, 404, 422, 503)


# -- fast paths: an in-process caller's int64 input_ids, the message pre-check, the lazy routing text ----------

import numpy as np  # noqa: E402

from mock_gateway import request_validation  # noqa: E402
from mock_gateway.policies import base as policy_base  # noqa: E402


@pytest.mark.parametrize(
    "ids",
    [[], [0], [5, 7, 2**32 - 1], list(range(40)), [-1], [2**32], [1, -5] * 20, [*range(30), 2**40]],
)
@pytest.mark.parametrize("policy", ["round_robin", "cache_aware", "prefix_hash"])
def test_generate_input_ids_as_an_int64_array_are_checked_and_routed_as_the_list(ids, policy):
    def decide(input_ids):
        core = make_core("--policy", policy)
        d = core.select("generate", {}, {"input_ids": input_ids})
        return d.url, d.branch, d.status, d.error_code, d.param, d.message

    assert decide(np.array(ids, dtype=np.int64)) == decide(ids)


@pytest.mark.parametrize(
    "arr", [np.array([1.0, 2.0]), np.array([True, False]), np.zeros((0, 3), dtype=np.int64), np.array([[-1, 2]])]
)
def test_an_array_of_the_wrong_kind_is_refused_like_a_bad_list(arr):
    d = make_core("--policy", "round_robin").select("generate", {}, {"input_ids": arr})
    assert (d.url, d.status, d.error_code, d.param) == (None, 422, "invalid_type", "input_ids")


def test_the_routing_text_is_extracted_only_for_a_policy_that_reads_it(monkeypatch):
    calls = []
    real = policy_base.routing_text
    monkeypatch.setattr(policy_base, "routing_text", lambda *a: calls.append(a) or real(*a))
    route(make_core("--policy", "manual"), "chat", {"x-smg-routing-key": "k"}, chat("a b c"), now=0.0)
    route(make_core("--policy", "consistent_hashing"), "chat", {"x-smg-routing-key": "k"}, chat("a b c"), now=0.0)
    assert calls == []
    route(make_core("--policy", "cache_aware"), "chat", {}, chat("a b c"), now=0.0)
    assert len(calls) == 1


roles = st.sampled_from(["user", "assistant", "tool", "system", "function", "bogus"]) | json_values
plainish = st.lists(
    st.fixed_dictionaries(
        {"role": roles, "content": st.text(max_size=3) | json_values},
        optional={"tool_call_id": st.text(max_size=3) | json_values, "reasoning_content": json_values},
    )
    | json_values,
    min_size=1,
    max_size=4,
)


@given(plainish)
def test_the_message_pre_check_only_skips_what_the_full_check_accepts(msgs):
    body = {"model": "fake-model", "messages": msgs}
    fast = request_validation.validate("chat", body)
    full_only = request_validation._plain_messages
    try:
        request_validation._plain_messages = lambda _m: False
        full = request_validation.validate("chat", body)
    finally:
        request_validation._plain_messages = full_only
    assert (fast is None) == (full is None)
    if fast is not None:
        assert (fast.status, fast.error_code, fast.param, fast.message) == (
            full.status,
            full.error_code,
            full.param,
            full.message,
        )


# -- deferred metric writes -------------------------------------------------------------------------------

import threading  # noqa: E402

from mock_gateway.metrics import GatewayMetrics  # noqa: E402


def test_deferred_counts_and_gauges_are_what_any_reader_sees():
    m = GatewayMetrics()
    branches, active = m.counts(m.manual_branch), m.gauges(m.worker_active)
    for _ in range(3):
        branches["vacant"].inc()
    m.manual_branch.labels(branch="vacant").inc()  # an immediate write to the same series adds up
    active["w"].set(4)
    active["w"].set(2)
    get = m.registry.get_sample_value
    assert get("smg_manual_policy_branch_total", {"branch": "vacant"}) == 4
    assert get("smg_worker_requests_active", {"worker": "w"}) == 2
    active["w"].set(7)
    branches["vacant"].inc()
    text = m.render().decode()
    assert 'smg_manual_policy_branch_total{branch="vacant"} 5.0' in text
    assert 'smg_worker_requests_active{worker="w"} 7.0' in text
    assert get("smg_manual_policy_branch_total", {"branch": "occupied_hit"}) is None  # no series before first use


def test_collecting_on_another_thread_while_counting_loses_and_doubles_nothing():
    m = GatewayMetrics()
    tally, gauge = m.counts(m.selection)[("regular", "http", "m", "manual")], m.gauges(m.worker_active)["w"]
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            m.render()

    threads = [threading.Thread(target=scrape) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(1, 20001):
        tally.inc()
        gauge.set(i)
    stop.set()
    for t in threads:
        t.join()
    get = m.registry.get_sample_value
    labels = {"worker_type": "regular", "connection_mode": "http", "model": "m", "policy": "manual"}
    assert get("smg_worker_selection_total", labels) == 20000
    assert get("smg_worker_requests_active", {"worker": "w"}) == 20000


from mock_gateway.routing_key import routing_text, strip_lineage  # noqa: E402

chat_parts = st.one_of(st.text("ab ", max_size=6), st.lists(st.text("xy", max_size=3), max_size=2), st.none())


@given(
    st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": chat_parts},
                                   optional={"reasoning_content": chat_parts}) | json_values, max_size=6),
    st.integers(-5, 40),
)
def test_a_routing_text_prefix_is_the_prefix_of_the_routing_text(msgs, n):
    for endpoint, body in (("chat", {"messages": msgs}), ("completions", {"prompt": "abc def " * 3}),
                           ("generate", {"text": "hello world"})):
        assert routing_text(endpoint, body, n) == routing_text(endpoint, body)[:n]


@pytest.mark.parametrize(("key", "stripped"), [("conv_t2_r1", "conv"), ("conv_r1", "conv"), ("conv_t2", "conv"),
                                                ("abc123", "abc123"), ("_r1", "_r1"), ("a_b", "a_b")])
def test_strip_lineage(key, stripped):
    assert strip_lineage(key) == stripped
