"""Recorded agent sessions: our JSONL schema, converters from TRIE and LLMServingSim, and the plans.

Sessions JSONL (one session per line; documented in ``docs/replay.md``)::

    {"session_id": "s1", "start_time": 0.0, "initial_prompt_tokens": 2400, "shared_prefix_tokens": 2000,
     "turns": [{"input_tokens": 0, "output_tokens": 310, "tool_latency": 1.5},
               {"input_tokens": 820, "output_tokens": 95, "tool_latency": 0.0}]}

One turn is one model request. Request ``k``'s prompt is request ``k-1``'s prompt + its output +
``turns[k].input_tokens`` (the tool result and any user text); request 0's prompt is
``initial_prompt_tokens + turns[0].input_tokens``. ``output_tokens`` is the exact answer length;
``tool_latency`` (seconds) runs from request ``k``'s finish to request ``k+1`` (unused on the last turn).
``start_time`` (seconds, default 0) is when the session opens. The first ``shared_prefix_tokens``
(default 0) of the user text are a prefix of one text shared by every session, so two sessions share
``min`` of their values (a common system prompt). Token counts include the chat template's framing,
and the replay reproduces them exactly: the first prompt is an empty system message (3 tokens), the
user message (3 + text) and the generation prompt (2), so ``initial_prompt_tokens >= 8 +
shared_prefix_tokens``; an appended input is a tool message (3 + text) and the generation prompt,
so ``input_tokens >= 5`` from the second turn (smaller values are raised to 5 and counted).

Replay is closed loop through the session server (``ReplayAgentRunner``: ``sim.agents.AgentRunner``
with the session's own user text), so it runs over either transport.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.agents import AgentRunner
from sim.replay.baselines import Segment
from sim.replay.mooncake import TraceError
from sim.workload.framing import MESSAGE_OVERHEAD
from sim.workload.plans import SessionPlan, TurnPlan
from sim.workload.scenario import Scenario
from sim.workload.seeds import stream_seed
from testbed_common.tokenizer import GENERATION_PROMPT, synth_text

FIRST_FRAME = MESSAGE_OVERHEAD + 2  # empty system message + "<|im_start|> user": shared by every session
FIRST_OVERHEAD = 2 * MESSAGE_OVERHEAD + len(GENERATION_PROMPT)  # 8
APPEND_MIN = MESSAGE_OVERHEAD + len(GENERATION_PROMPT)  # 5: a tool message with no text
SHARED_STREAM, USER_STREAM = 11, 12


@dataclass(frozen=True)
class TurnSpec:
    input_tokens: int
    output_tokens: int
    tool_latency: float


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    start_time: float
    initial_prompt_tokens: int
    shared_prefix_tokens: int
    turns: tuple[TurnSpec, ...]

    @property
    def first_prompt_tokens(self) -> int:
        return self.initial_prompt_tokens + self.turns[0].input_tokens

    def prompts(self) -> list[int]:
        """Prompt length of each request as replayed (appended inputs raised to ``APPEND_MIN``)."""
        out = [self.first_prompt_tokens]
        for k in range(1, len(self.turns)):
            out.append(out[-1] + self.turns[k - 1].output_tokens + max(self.turns[k].input_tokens, APPEND_MIN))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "start_time": self.start_time,
                "initial_prompt_tokens": self.initial_prompt_tokens, "shared_prefix_tokens": self.shared_prefix_tokens,
                "turns": [{"input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
                           "tool_latency": t.tool_latency} for t in self.turns]}


def _num(obj: dict, key: str, where: str, default: float | None = None, minimum: float = 0.0) -> float:
    v = obj.get(key, default)
    if v is None:
        raise TraceError(f"{where}: missing field {key!r}")
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v in (float("inf"), float("-inf")):
        raise TraceError(f"{where}: {key} must be a finite number, got {v!r}")
    if v < minimum:
        raise TraceError(f"{where}: {key} must be >= {minimum:g}, got {v!r}")
    return float(v)


def _int(obj: dict, key: str, where: str, default: int | None = None, minimum: int = 0) -> int:
    v = _num(obj, key, where, default, minimum)
    if int(v) != v:
        raise TraceError(f"{where}: {key} must be an integer, got {obj.get(key)!r}")
    return int(v)


def parse_session(obj: object, index: int) -> SessionSpec:
    where = f"session {index + 1}"
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object")
    sid = obj.get("session_id", f"s{index}")
    if not isinstance(sid, str | int) or isinstance(sid, bool):
        raise TraceError(f"{where}: session_id must be a string")
    turns_raw = obj.get("turns")
    if not isinstance(turns_raw, list) or not turns_raw:
        raise TraceError(f"{where}: turns must be a non-empty list")
    turns = []
    for k, t in enumerate(turns_raw):
        tw = f"{where} turn {k + 1}"
        if not isinstance(t, dict):
            raise TraceError(f"{tw}: expected a JSON object")
        turns.append(TurnSpec(_int(t, "input_tokens", tw, 0), _int(t, "output_tokens", tw, minimum=1),
                              _num(t, "tool_latency", tw, 0.0)))
    spec = SessionSpec(str(sid), _num(obj, "start_time", where, 0.0), _int(obj, "initial_prompt_tokens", where),
                       _int(obj, "shared_prefix_tokens", where, 0), tuple(turns))
    if spec.first_prompt_tokens < FIRST_OVERHEAD + spec.shared_prefix_tokens:
        raise TraceError(f"{where}: the first prompt ({spec.first_prompt_tokens} tokens) must hold the template's "
                         f"{FIRST_OVERHEAD} tokens plus shared_prefix_tokens ({spec.shared_prefix_tokens})")
    return spec


def read_jsonl(path: str | Path) -> list[Any]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise TraceError(f"{path}: line {i + 1}: not JSON: {e}") from e
    if not out:
        raise TraceError(f"{path}: no records")
    return out


def load_sessions(path: str | Path, fmt: str = "sessions", limit: int | None = None) -> list[SessionSpec]:
    """Sessions from our schema, or converted from ``trie`` / ``llmservingsim`` records."""
    conv = {"sessions": parse_session, "trie": from_trie, "llmservingsim": from_llmservingsim}[fmt]
    objs = read_jsonl(path)
    if limit is not None:
        objs = objs[:limit]
    return [conv(o, i) for i, o in enumerate(objs)]


def dump_sessions(sessions: Iterable[SessionSpec], path: str | Path) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for s in sessions:
            f.write(json.dumps(s.to_json(), separators=(",", ":")) + "\n")
            n += 1
    return n


def detect_format(obj: object) -> str | None:
    """``mooncake`` | ``sessions`` | ``trie`` | ``llmservingsim`` from one record's keys."""
    if not isinstance(obj, dict):
        return None
    if "hash_ids" in obj:
        return "mooncake"
    if "sub_requests" in obj:
        return "llmservingsim"
    if "num_turns" in obj or "input_prompt_length" in obj:
        return "trie"
    if "turns" in obj:
        return "sessions"
    return None


# ---- converters --------------------------------------------------------------------------------


def _list(obj: dict, key: str, where: str, n: int, kind: type = int) -> list:
    v = obj.get(key)
    if not isinstance(v, list) or len(v) < n:
        raise TraceError(f"{where}: {key} must be a list of at least {n} numbers")
    out = []
    for x in v[:n]:
        if isinstance(x, bool) or not isinstance(x, int | float) or x < 0 or x != x:
            raise TraceError(f"{where}: {key} must hold non-negative numbers")
        out.append(kind(x))
    return out


def from_trie(obj: object, index: int) -> SessionSpec:
    """TRIE / Applied-Compute record: ``num_turns, input_prompt_length, assistant_response_length[],
    tool_call_output_length[], tool_call_latency[]`` (s), optional ``final_assistant_response_length``.

    Turn ``i`` is a request answered with ``assistant_response_length[i]`` tokens, followed by a tool
    call of ``tool_call_latency[i]`` seconds whose output (``tool_call_output_length[i]`` tokens) is
    appended to the next prompt; a final answer, when given, is one more request after the last tool.
    Optional ``session_id`` and ``start_time``/``arrival_time`` (s)."""
    where = f"record {index + 1}"
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object")
    n = _int(obj, "num_turns", where, minimum=1)
    prompt = _int(obj, "input_prompt_length", where, minimum=1)
    out = _list(obj, "assistant_response_length", where, n)
    final = obj.get("final_assistant_response_length")
    n_tools = n if final is not None else n - 1
    tool_out = _list(obj, "tool_call_output_length", where, n_tools)
    tool_lat = _list(obj, "tool_call_latency", where, n_tools, float)
    turns = [TurnSpec(0 if i == 0 else tool_out[i - 1], max(out[i], 1), tool_lat[i] if i < n_tools else 0.0)
             for i in range(n)]
    if final is not None:
        turns.append(TurnSpec(tool_out[n - 1], max(_int(obj, "final_assistant_response_length", where), 1), 0.0))
    start = obj.get("start_time", obj.get("arrival_time", 0.0))
    raw = {"session_id": str(obj.get("session_id", obj.get("id", f"trie-{index}"))), "start_time": start,
           "initial_prompt_tokens": max(prompt, FIRST_OVERHEAD), "turns": [t.__dict__ for t in turns]}
    return parse_session(raw, index)


def from_llmservingsim(obj: object, index: int) -> SessionSpec:
    """LLMServingSim agentic session: ``session_id, arrival_time_ns, sub_requests[{input_toks,
    output_toks, tool_duration_ns}]``. ``input_toks`` is a sub-request's whole prompt (the simulator
    derives prefix reuse from the previous one), so the appended input is
    ``input_toks[k] - input_toks[k-1] - output_toks[k-1]``; a sub-request that does not extend the
    previous one cannot be expressed here and is an error. ``tool_duration_ns`` is the wait after the
    sub-request before the next one."""
    where = f"session {index + 1}"
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object")
    subs = obj.get("sub_requests")
    if not isinstance(subs, list) or not subs:
        raise TraceError(f"{where}: sub_requests must be a non-empty list")
    turns = []
    prev_ctx = None
    first = 0
    for k, s in enumerate(subs):
        sw = f"{where} sub_request {k + 1}"
        if not isinstance(s, dict):
            raise TraceError(f"{sw}: expected a JSON object")
        inp = _int(s, "input_toks", sw, minimum=1)
        outp = _int(s, "output_toks", sw, minimum=1)
        tool = _num(s, "tool_duration_ns", sw, 0.0) / 1e9
        if prev_ctx is None:
            first, appended = inp, 0
        else:
            appended = inp - prev_ctx
            if appended < 0:
                raise TraceError(f"{sw}: input_toks {inp} does not extend the previous prompt + output ({prev_ctx}); "
                                 "only append-only sessions can be replayed")
        turns.append({"input_tokens": appended, "output_tokens": outp, "tool_latency": tool})
        prev_ctx = inp + outp
    start = _num(obj, "arrival_time_ns", where, 0.0) / 1e9
    raw = {"session_id": str(obj.get("session_id", f"lss-{index}")), "start_time": start,
           "initial_prompt_tokens": max(first, FIRST_OVERHEAD), "turns": turns}
    return parse_session(raw, index)


# ---- replay --------------------------------------------------------------------------------------


def user_texts(sessions: Sequence[SessionSpec], seed: int) -> list[str]:
    """The user message of each session: the shared text's first ``shared_prefix_tokens`` words, then its own."""
    longest = max((s.shared_prefix_tokens for s in sessions), default=0)
    shared = synth_text(stream_seed(seed, SHARED_STREAM), longest).split() if longest else []
    out = []
    for i, s in enumerate(sessions):
        own = s.first_prompt_tokens - FIRST_OVERHEAD - s.shared_prefix_tokens
        words = shared[: s.shared_prefix_tokens] + synth_text(stream_seed(seed, USER_STREAM, i), own).split()
        out.append(" ".join(words))
    return out


def to_plans(sessions: Sequence[SessionSpec]) -> tuple[list[SessionPlan], int]:
    """One ``SessionPlan`` per session (group = its index) and how many appended inputs were raised."""
    plans = []
    raised = 0
    for i, s in enumerate(sessions):
        turns = []
        for k, t in enumerate(s.turns):
            nxt = s.turns[k + 1].input_tokens if k + 1 < len(s.turns) else APPEND_MIN
            if nxt < APPEND_MIN:
                raised += 1
            turns.append(TurnPlan(t.output_tokens, max(nxt, APPEND_MIN) - APPEND_MIN, t.tool_latency, 0.0))
        plans.append(SessionPlan(i, i, s.start_time, tuple(turns)))
    return plans, raised


def scenario_for(sessions: Sequence[SessionSpec], name: str, workers: int, kv: int | None, seed: int) -> Scenario:
    longest = max(p + t.output_tokens for s in sessions for p, t in zip(s.prompts(), s.turns, strict=True))
    return Scenario(name=name, description=f"replay of {len(sessions)} recorded sessions", seed=seed, workers=workers,
                    kv_capacity_tokens=kv, sessions=len(sessions), group_size=1, system_prompt_tokens=0,
                    task_prompt_tokens=0, max_context_tokens=max(longest, 1), arrival="rollout")


class ReplayAgentRunner(AgentRunner):
    """``AgentRunner`` whose first user message is the session's own text (``user_texts``)."""

    def __init__(self, scenario: Scenario, transport: Any, plans: list[SessionPlan], texts: Sequence[str],
                 **kwargs: Any) -> None:
        super().__init__(scenario, transport, plans, **kwargs)
        self._texts = list(texts)

    def _task(self, group: int) -> str:
        return self._texts[group]


def session_segments(sessions: Sequence[SessionSpec]) -> list[tuple[list[Segment], Segment]]:
    """Each request as baseline segments, in zero-latency send order (start + earlier tool latencies)."""
    timed: list[tuple[float, int, int, list[Segment], Segment]] = []
    for i, s in enumerate(sessions):
        t = s.start_time
        first: list[Segment] = [("frame", FIRST_FRAME)]
        if s.shared_prefix_tokens:
            first.append(("shared", s.shared_prefix_tokens))
        first.append((("user", i), s.first_prompt_tokens - FIRST_FRAME - s.shared_prefix_tokens))
        prompt = first
        for k, turn in enumerate(s.turns):
            if k:
                prompt = [*prompt, (("out", i, k - 1), s.turns[k - 1].output_tokens),
                          (("in", i, k), max(turn.input_tokens, APPEND_MIN))]
            key: Hashable = ("out", i, k)
            timed.append((t, i, k, prompt, (key, turn.output_tokens)))
            t += turn.tool_latency
    timed.sort(key=lambda x: (x[0], x[1], x[2]))
    return [(p, o) for _, _, _, p, o in timed]
