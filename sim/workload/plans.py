"""The per-session plans drawn from a scenario: every turn's lengths, latencies and retries, and the arrivals.

Everything random about the workload (turn counts, output and tool lengths, tool latency, think time, retries,
arrivals) is drawn here, up front, from one seeded generator, so every policy under test replays exactly the
same plans. The model's answers are not drawn here: the workers derive them from the prompt
(``testbed_common.tokenizer.synth_answer``), so only their *lengths* (``max_tokens``) are planned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.workload.framing import TURN_FRAMING
from sim.workload.scenario import Scenario
from sim.workload.seeds import PLAN_STREAM, stream_seed


@dataclass(frozen=True)
class TurnPlan:
    output_tokens: int  # max_tokens of this turn (exact output length)
    tool_output_tokens: int  # the tool result appended after the answer (unused on the last turn)
    tool_latency: float  # seconds from the answer to the tool result
    think_time: float  # further seconds before the next request
    retry_output_tokens: int = 0  # > 0: the agent drops this answer and asks again with this max_tokens


@dataclass(frozen=True)
class SessionPlan:
    index: int
    group: int  # GRPO group = task index
    start: float | None  # arrival of the first turn; None: when a concurrency slot frees
    turns: tuple[TurnPlan, ...]

    @property
    def requests(self) -> int:
        return len(self.turns) + sum(1 for t in self.turns if t.retry_output_tokens)


def plan_sessions(scenario: Scenario) -> list[SessionPlan]:
    """Every session's turns, drawn from the scenario's seed (same seed, same plans)."""
    rng = np.random.default_rng(stream_seed(scenario.seed, PLAN_STREAM))
    n = scenario.sessions
    turn_counts = scenario.turns.sample_int(rng, n, floor=1)
    total = int(turn_counts.sum())
    out_tok = scenario.output_tokens.sample_int(rng, total, floor=2)
    tool_tok = scenario.tool_output_tokens.sample_int(rng, total, floor=1)
    tool_lat = np.maximum(scenario.tool_latency.sample(rng, total), 0.0)
    think = np.maximum(scenario.think_time.sample(rng, total), 0.0)
    retry = rng.random(total) < scenario.retry_rate
    retry_tok = scenario.output_tokens.sample_int(rng, total, floor=2)
    if scenario.arrival == "poisson":
        starts: list[float | None] = np.cumsum(rng.exponential(1.0 / scenario.rate, n)).tolist()
        starts = [0.0, *starts[:-1]]  # the first session opens the run
    elif scenario.arrival == "rollout":
        starts = [0.0] * n
    else:
        starts = [None] * n
    plans = []
    pos = 0
    first = scenario.first_prompt_tokens
    limit, step = scenario.max_context_tokens, TURN_FRAMING
    # plain Python numbers up front (tolist gives the same ints and floats as int()/float() of each element)
    counts_l, out_l, tool_l, retry_l, retry_tok_l = (turn_counts.tolist(), out_tok.tolist(), tool_tok.tolist(),
                                                     retry.tolist(), retry_tok.tolist())
    lat_l, think_l = tool_lat.tolist(), think.tolist()
    for i in range(n):
        turns: list[TurnPlan] = []
        prompt = first
        for k in range(counts_l[i]):
            j = pos + k
            out = out_l[j]
            if prompt + out > limit:
                out = limit - prompt
                if out < 2 or k > 0:
                    break  # the context is full: the session ends
            rt = retry_tok_l[j] if (k > 0 and retry_l[j]) else 0
            if rt and prompt + rt > limit:
                rt = 0
            turns.append(TurnPlan(out, tool_l[j], lat_l[j], think_l[j], rt))
            prompt += (rt or out) + step + tool_l[j]
        if not turns:  # the first prompt alone is near the limit: one short turn
            turns.append(TurnPlan(2, 1, lat_l[pos], think_l[pos], 0))
        pos += counts_l[i]
        plans.append(SessionPlan(i, i // scenario.group_size, starts[i], tuple(turns)))
    return plans


def planned_requests(plans: list[SessionPlan]) -> int:
    return sum(p.requests for p in plans)
