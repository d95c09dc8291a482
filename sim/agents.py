"""Agents: SimPy processes that speak the session server's protocol, and the loop that runs them.

One agent = one planned session (``sim.workload.plans.SessionPlan``): create a session, send the full
message list every turn with ``sim_time = env.now``, wait in virtual time until the worker's
reported finish plus the tool latency and think time, append the answer and the tool result, go
on; at the end read the session's records and delete it. A planned retry drops the answer it got
and asks again with the same messages (the session server rolls one model turn back).

Transport calls return at once (virtual time), so SimPy runs one agent at a time and requests
reach the servers in nondecreasing virtual time: the run is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import simpy

from sim.cosim import sample_series
from sim.engine.radix import as_ids
from sim.oracle import Oracle, Turn, max_cacheable
from sim.series import SERIES_INTERVAL, SeriesSampler, WorkerSamples
from sim.transports.base import Reply, Transport, TransportError
from sim.workload.plans import SessionPlan, plan_sessions
from sim.workload.scenario import Scenario
from sim.workload.texts import ToolTexts, system_prompt, task_prompt
from testbed_common import tokenizer, vtime
from testbed_common.fastjson import Deferred

MODEL = "mock-model"


@dataclass(slots=True)
class RequestRecord:
    """One chat request as the agent saw it (times are virtual seconds)."""

    session: int  # plan index
    turn: int  # 0-based model turn
    retry: bool  # a re-ask of the same turn after dropping the answer
    sent: float  # sim_time of the request
    status: int
    worker: str | None = None
    arrival: float = 0.0
    start: float = 0.0
    first_token: float = 0.0
    finish: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    eligible_tokens: int = 0  # tokens the session's previous request made reusable (shared prefix, < prompt)
    oracle_cached: int = 0
    # PD (the decode answer's ``sim.pd``; None / 0 on a co-located pool): the prefill leg's worker and the end of
    # its prefill, the decode worker's own radix match, the KV sent and when it was in place on the decode worker.
    # ``worker`` is then the decode worker and ``cached_tokens`` the prefill's hit (SGLang relays it)
    prefill_worker: str | None = None
    prefill_end: float = 0.0
    decode_prefix_tokens: int = 0
    transfer_bytes: int = 0
    transfer_ready: float = 0.0
    # HiCache (the answer's ``sim``; 0 when absent): where ``cached_tokens`` came from (they sum to it: the GPU tree,
    # the worker's host pool, the shared L3), the prefill time spent loading back beyond compute, the queue time
    # spent waiting for the L3 prefetch
    cached_device: int = 0
    cached_host: int = 0
    cached_storage: int = 0
    load_back_seconds: float = 0.0
    prefetch_seconds: float = 0.0
    error: str | None = None
    response: Any = field(default=None, repr=False, compare=False)  # the answer body, kept with ``keep_log``

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival


@dataclass
class SessionOutcome:
    index: int
    session_id: str | None
    turns_done: int = 0
    records_seen: int | None = None  # records the session server held at the end
    start: float = 0.0
    end: float = 0.0
    error: str | None = None
    # with ``AgentRunner(keep_log=True)``: the agent's own log of its successful turns, as the session
    # server should hold them (a planned retry replaces the turn before it), and the records it held
    log: list[TurnLog] = field(default_factory=list)
    records: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class TurnLog:
    """One successful turn as the agent saw it: what it sent and what it got back."""

    turn: int
    retry: bool
    sim_time: float
    messages: list[dict[str, Any]]
    max_tokens: int
    response: Any


def compare_records(log: list[TurnLog], records: list[dict[str, Any]]) -> list[str]:
    """Differences between an agent's log and a session's records (empty: nothing lost, nothing duplicated,
    same request and response for each committed turn, in order)."""
    out = []
    if len(log) != len(records):
        out.append(f"{len(records)} records for {len(log)} logged turns")
    for i, (t, r) in enumerate(zip(log, records, strict=False)):
        req = r.get("request") or {}
        if req.get("messages") != t.messages:
            out.append(f"record {i}: request messages differ from turn {t.turn}")
        if req.get(vtime.SIM_TIME_FIELD) != t.sim_time or req.get("max_tokens") != t.max_tokens:
            out.append(f"record {i}: sim_time/max_tokens differ from turn {t.turn}")
        response = r.get("response")
        if isinstance(response, Deferred):  # a record kept deferred by an in-process session server
            response = response.value()
        if response != t.response:
            out.append(f"record {i}: response differs from turn {t.turn}")
    return out


@dataclass
class WorkloadResult:
    requests: list[RequestRecord] = field(default_factory=list)
    sessions: list[SessionOutcome] = field(default_factory=list)
    oracle: Oracle = field(default_factory=Oracle)
    end_time: float = 0.0
    series: WorkerSamples | None = None  # per-worker samples (sim.series), under the co-simulated clock


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Length of the longest common prefix of two token sequences (lists or int arrays)."""
    n = min(len(a), len(b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = as_ids(a)[:n], as_ids(b)[:n]
        if x.tobytes() == y.tobytes():  # the usual case, a memcmp (cheaper than a ufunc and a reduction)
            return n
        return int((x == y).argmin())
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


_second = itemgetter(1)


def _output_ids(logprobs: list[Any]) -> np.ndarray:
    """The token ids of ``meta_info.output_token_logprobs`` entries ``[logprob, token_id, ...]``."""
    try:
        return np.fromiter(map(_second, logprobs), np.int64, len(logprobs))
    except (TypeError, ValueError, OverflowError):  # not plain ints: int() decides, as it always did
        return np.array([int(t[1]) for t in logprobs], dtype=np.int64)


def _error_text(reply: Reply) -> str:
    body = reply.body
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        if err is None:
            err = body.get("message")
        if err is not None:
            return f"{reply.status}: {err}"
    return f"HTTP {reply.status}"


class AgentRunner:
    """Runs every planned session of a scenario through a transport in one SimPy environment."""

    def __init__(self, scenario: Scenario, transport: Transport, plans: list[SessionPlan] | None = None,
                 on_request: Callable[[RequestRecord], None] | None = None, until: float | None = None,
                 keep_log: bool = False, series_interval: float | None = SERIES_INTERVAL) -> None:
        self.scenario = scenario
        self.keep_log = keep_log
        self.transport = transport
        self.plans = plans if plans is not None else plan_sessions(scenario)
        self.on_request = on_request
        self.until = until
        self.env = simpy.Environment()
        self.result = WorkloadResult(oracle=Oracle(prompt_only=scenario.prompt_only_ceiling))
        self._system = system_prompt(scenario)
        self._tasks: dict[int, str] = {}
        self._tools = ToolTexts(scenario)
        self._turns: dict[int, Turn] = {}  # per session: its last request as the oracle saw it
        # the co-simulated clock (sim.cosim), when the transport's workers follow this environment's time
        bind = getattr(transport, "bind_clock", None)
        self.clock = bind(self.env) if bind is not None else None
        # the workers' time series (sim.series): their engines are in this process and follow this clock
        cores = getattr(transport, "fault_cores", list)() if self.clock is not None else []
        self._sampler = (SeriesSampler(cores, series_interval)
                         if series_interval is not None and SeriesSampler.samplable(cores) else None)

    # ---- one request --------------------------------------------------------------------------

    def _body(self, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        """The chat body; virtual time stamps it with ``sim_time`` (live time does not: ``sim.live``)."""
        return {"model": MODEL, "messages": messages, "max_tokens": max_tokens,
                vtime.SIM_TIME_FIELD: float(self.env.now)}

    def _chat_steps(self, sid: str, plan: SessionPlan, turn: int, retry: bool, messages: list[dict[str, Any]],
                    max_tokens: int, prev_full: np.ndarray | None
                    ) -> Generator[simpy.Event, Any, tuple[RequestRecord, np.ndarray | None, str]]:
        """One request as SimPy steps: under the co-simulated clock (``sim.cosim``) until the engine that holds it
        finishes it; none when the transport answers at once; live time waits (``sim.live`` overrides this)."""
        if self.clock is None:
            return self._chat(sid, plan, turn, retry, messages, max_tokens, prev_full)
        rec = RequestRecord(plan.index, turn, retry, float(self.env.now), 0)
        try:
            reply = yield from self.transport.chat_steps(sid, self._body(messages, max_tokens))
        except TransportError as e:
            rec.error = f"transport: {e}"
            return rec, None, ""
        return self._parse(rec, reply, messages, prev_full)

    def _chat(self, sid: str, plan: SessionPlan, turn: int, retry: bool, messages: list[dict[str, Any]],
              max_tokens: int, prev_full: np.ndarray | None) -> tuple[RequestRecord, np.ndarray | None, str]:
        rec = RequestRecord(plan.index, turn, retry, float(self.env.now), 0)
        try:
            reply = self.transport.chat(sid, self._body(messages, max_tokens))
        except TransportError as e:
            rec.error = f"transport: {e}"
            return rec, None, ""
        return self._parse(rec, reply, messages, prev_full)

    def _parse(self, rec: RequestRecord, reply: Reply, messages: list[dict[str, Any]],
               prev_full: np.ndarray | None) -> tuple[RequestRecord, np.ndarray | None, str]:
        """Fill ``rec`` from the answer; also the conversation's token ids so far (prompt + output, int64)
        and the answer's text. Token ids are int64 arrays throughout (an in-process upstream hands the prompt
        over as one, JSON as a list converted once): the per-turn Python work is O(new tokens), the rest is
        vectorised (the prefix shared with the previous turn) or skipped (the oracle resumes the
        conversation's path: ``Oracle.observe_turn``)."""
        rec.status = reply.status
        answer = reply.answer
        if answer is None and (not reply.ok or not isinstance(reply.body, dict)):
            rec.error = _error_text(reply)
            return rec, None, ""
        if self.keep_log:
            rec.response = reply.body
        try:
            if answer is not None:  # an in-process answer, typed (its body is built only if read)
                sim, content = answer.sim, answer.message["content"] or ""
                output_ids, prompt_ids = answer.output_ids, answer.prompt_ids
            else:
                data = reply.body
                sim = data[vtime.SIM_RESPONSE_FIELD]
                choice = data["choices"][0]
                content = choice["message"]["content"] or ""
                output_ids = _output_ids(choice["meta_info"]["output_token_logprobs"])
                prompt = choice.get("prompt_token_ids")
                if prompt is None:  # an upstream that does not echo them: the template is additive
                    prompt = tokenizer.render(messages, True)
                prompt_ids = as_ids(prompt)
            rec.worker = str(sim.get("worker")) if sim.get("worker") is not None else None
            rec.arrival, rec.start = float(sim["arrival"]), float(sim["start"])
            rec.first_token, rec.finish = float(sim["first_token"]), float(sim["finish"])
            rec.cached_tokens = int(sim["cached_tokens"])
            pd = sim.get("pd")
            if pd is not None:
                rec.prefill_worker = str(pd["prefill_worker"])
                rec.prefill_end, rec.transfer_ready = float(pd["prefill_end"]), float(pd["transfer_ready"])
                rec.decode_prefix_tokens = int(pd["decode_prefix_tokens"])
                rec.transfer_bytes = int(pd["transfer_bytes"])
            tiers = sim.get("cached_tokens_details")
            if tiers is not None:
                rec.cached_device, rec.cached_host = int(tiers["device"]), int(tiers["host"])
                rec.cached_storage = int(tiers["storage"])
                rec.load_back_seconds = float(sim["load_back_seconds"])
                rec.prefetch_seconds = float(sim["prefetch_seconds"])
        except (KeyError, IndexError, TypeError, ValueError, OverflowError) as e:
            rec.error = f"malformed answer: {type(e).__name__}: {e}"
            return rec, None, ""
        rec.prompt_tokens = len(prompt_ids)
        rec.output_tokens = len(output_ids)
        shared = 0
        if prev_full is not None:
            shared = common_prefix(prev_full, prompt_ids)
            rec.eligible_tokens = min(shared, max_cacheable(len(prompt_ids)))
        full = np.concatenate((prompt_ids, output_ids))
        oracle = self.result.oracle
        # what the request puts in the oracle's cache enters it at its finish; in PD, its prompt at its prefill's end
        inserted = rec.prefill_end if oracle.prompt_only else rec.finish
        if type(oracle).observe is Oracle.observe:  # the plain oracle: the conversation's path is not re-compared
            prev = self._turns.get(rec.session)
            if prev is None or prev.full is not prev_full:
                prev, shared = None, 0
            rec.oracle_cached, self._turns[rec.session] = oracle.observe_turn(rec.arrival, inserted, prompt_ids, full,
                                                                              prev, shared)
        else:
            rec.oracle_cached = oracle.observe(rec.arrival, inserted, prompt_ids, output_ids)
        return rec, full, content

    def _record(self, rec: RequestRecord) -> None:
        self.result.requests.append(rec)
        if self.on_request is not None:
            self.on_request(rec)

    # ---- one session --------------------------------------------------------------------------

    def _task(self, group: int) -> str:
        t = self._tasks.get(group)
        if t is None:
            t = self._tasks[group] = task_prompt(self.scenario, group)
        return t

    def session(self, plan: SessionPlan) -> Generator[simpy.Event, Any, None]:
        env, tr = self.env, self.transport
        out = SessionOutcome(plan.index, None, start=float(env.now))
        self.result.sessions.append(out)
        try:
            created = tr.create_session()
        except TransportError as e:
            out.error = f"create: transport: {e}"
            out.end = float(env.now)
            return
        if not created.ok or not isinstance(created.body, dict) or "session_id" not in created.body:
            out.error = f"create: {_error_text(created)}"
            out.end = float(env.now)
            return
        sid = str(created.body["session_id"])
        out.session_id = sid
        messages: list[dict[str, Any]] = [{"role": "system", "content": self._system},
                                          {"role": "user", "content": self._task(plan.group)}]
        prev_full: np.ndarray | None = None
        for k, turn in enumerate(plan.turns):
            rec, full, content = yield from self._chat_steps(sid, plan, k, False, messages, turn.output_tokens,
                                                             prev_full)
            self._record(rec)
            if not rec.ok:
                out.error = f"turn {k}: {rec.error}"
                break
            if self.keep_log:
                out.log.append(TurnLog(k, False, rec.sent, messages, turn.output_tokens, rec.response))
            if rec.finish > env.now:
                yield env.timeout(rec.finish - env.now)
            prev_full = full
            if turn.retry_output_tokens:
                # the agent rejects this answer (say, a malformed tool call) and asks again at once
                rec, full, content = yield from self._chat_steps(sid, plan, k, True, messages,
                                                                 turn.retry_output_tokens, prev_full)
                self._record(rec)
                if not rec.ok:
                    out.error = f"turn {k} retry: {rec.error}"
                    break
                if self.keep_log:  # the session server rolls the dropped answer back: this turn replaces it
                    out.log[-1:] = [TurnLog(k, True, rec.sent, messages, turn.retry_output_tokens, rec.response)]
                if rec.finish > env.now:
                    yield env.timeout(rec.finish - env.now)
                prev_full = full
            out.turns_done = k + 1
            if k + 1 == len(plan.turns):
                break
            messages = [*messages, {"role": "assistant", "content": content},
                        # the real SMG refuses a tool message without tool_call_id (400)
                        {"role": "tool", "tool_call_id": f"call_{plan.index}_{k}",
                         "content": self._tools.text(plan.index, k, turn.tool_output_tokens)}]
            wait = turn.tool_latency + turn.think_time
            if wait > 0:
                yield env.timeout(wait)
        out.end = float(env.now)
        self._turns.pop(plan.index, None)
        try:
            view = tr.get_session(sid)
            if view.ok and isinstance(view.body, dict) and isinstance(view.body.get("records"), list):
                out.records_seen = len(view.body["records"])
                if self.keep_log:
                    out.records = view.body["records"]
                if out.error is None and out.records_seen != out.turns_done:
                    out.error = f"session server holds {out.records_seen} records for {out.turns_done} turns"
            elif out.error is None:
                out.error = f"get: {_error_text(view)}"
            deleted = tr.delete_session(sid)
            if not deleted.ok and out.error is None:
                out.error = f"delete: {_error_text(deleted)}"
        except TransportError as e:
            if out.error is None:
                out.error = f"records: transport: {e}"

    # ---- arrivals -----------------------------------------------------------------------------

    def _delayed(self, plan: SessionPlan) -> Generator[simpy.Event, Any, None]:
        if plan.start and plan.start > self.env.now:
            yield self.env.timeout(plan.start - self.env.now)
        yield from self.session(plan)

    def _slot(self, queue: list[SessionPlan]) -> Generator[simpy.Event, Any, None]:
        while queue:
            plan = queue.pop()
            yield from self.session(plan)

    def run(self) -> WorkloadResult:
        """Run every session to its end (or until ``until``); returns the records."""
        if self.scenario.arrival == "concurrency":
            queue = list(reversed(self.plans))
            agents = [self.env.process(self._slot(queue))
                      for _ in range(min(self.scenario.concurrency, len(queue)))]
        else:
            agents = [self.env.process(self._delayed(plan)) for plan in self.plans]
        if self._sampler is not None:
            done = self.env.all_of(agents)
            sample_series(self.env, self._sampler.samples.interval, self._sampler.sample, lambda: not done.triggered)
            self.result.series = self._sampler.samples
        self.env.run(until=self.until)
        self.result.end_time = float(self.env.now)
        self.result.oracle.finish()
        return self.result


def run_workload(scenario: Scenario, transport: Transport, plans: list[SessionPlan] | None = None,
                 on_request: Callable[[RequestRecord], None] | None = None) -> WorkloadResult:
    return AgentRunner(scenario, transport, plans, on_request).run()
