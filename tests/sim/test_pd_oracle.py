"""The PD ceiling: a prefill worker's tree receives prompts only, so the oracle of a PD pool inserts each prompt
alone (when its prefill ends). One session pinned on both legs, on a prefill worker with an unbounded cache,
reaches it exactly; the co-located oracle (prompt + output) lies above it. Synthetic observations: a fake PD
transport answers as the contract's decode worker does (``sim.pd``), its prefill tree an unbounded RadixCache."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.agents import AgentRunner
from sim.engine.radix import RadixCache
from sim.measures import summarize
from sim.oracle import Oracle, max_cacheable
from sim.transports.base import Reply
from sim.workload.scenario import Dist, Scenario
from testbed_common import tokenizer, vtime

KV_BYTES = 54_144


class PinnedPdTransport:
    """One prefill worker (p0) and one decode worker (d0), every request on both: the prefill tree (unbounded)
    matches at most prompt - 1 tokens and then holds the prompt only, as SGLang's prefill inserts it."""

    def __init__(self) -> None:
        self.tree = RadixCache(capacity=None)
        self.records: dict[str, list[Any]] = {}

    def create_session(self) -> Reply:
        sid = f"s{len(self.records)}"
        self.records[sid] = []
        return Reply(200, {"session_id": sid})

    def get_session(self, sid: str) -> Reply:
        return Reply(200, {"records": self.records[sid]})

    def delete_session(self, sid: str) -> Reply:
        return Reply(200, {})

    def chat(self, sid: str, body: dict[str, Any]) -> Reply:
        now = float(body[vtime.SIM_TIME_FIELD])
        prompt = tokenizer.render(body["messages"], True)
        hit = min(self.tree.match(prompt, now)[0], max_cacheable(len(prompt)))
        self.tree.insert(prompt, now)
        text, output = tokenizer.synth_answer(len(prompt), body["max_tokens"])
        sent = len(prompt)  # the decode radix cache is off: the whole prompt's KV
        sim = {"worker": "d0", "arrival": now, "start": now, "first_token": now + 0.03, "finish": now + 0.1,
               "cached_tokens": hit, "evicted_tokens": 0,
               "pd": {"prefill_worker": "p0", "prefill_start": now, "prefill_end": now + 0.01,
                      "prefill_cached_tokens": hit, "decode_prefix_tokens": 0, "transfer_tokens": sent,
                      "transfer_bytes": sent * KV_BYTES, "transfer_ready": now + 0.02}}
        self.records[sid].append({})
        return Reply(200, {"choices": [{"message": {"content": text}, "prompt_token_ids": prompt,
                                        "meta_info": {"output_token_logprobs": [[0.0, t] for t in output]}}],
                           vtime.SIM_RESPONSE_FIELD: sim})


def one_session(turns: int, output: float, tool: float) -> Scenario:
    return Scenario(workers=2, prefill_workers=1, decode_workers=1, sessions=1, group_size=1,
                    max_context_tokens=100_000, system_prompt_tokens=50, task_prompt_tokens=10,
                    turns=Dist("constant", value=turns), output_tokens=Dist("constant", value=output),
                    tool_output_tokens=Dist("constant", value=tool), tool_latency=Dist("constant", value=1.0))


@settings(max_examples=15, deadline=None)
@given(turns=st.integers(2, 8), output=st.integers(2, 300), tool=st.integers(1, 300))
def test_one_session_pinned_on_both_legs_reaches_the_pd_oracle_exactly(turns, output, tool):
    scenario = one_session(turns, output, tool)
    result = AgentRunner(scenario, PinnedPdTransport()).run()
    assert result.oracle.prompt_only and len(result.requests) == turns
    assert all(r.ok and r.cached_tokens == r.oracle_cached for r in result.requests)
    m = summarize(result, ["p0", "d0"], roles={"p0": "prefill", "d0": "decode"}, transfer_bandwidth=50e9)
    assert m["kv_reuse"] == m["oracle_reuse"] > 0
    assert m["stickiness"] == m["decode_stickiness"] == 1.0


def test_the_pd_oracle_lies_below_the_colocated_one_by_the_previous_answer():
    """A prompt-only tree misses, on each later turn, the previous answer the co-located tree holds."""
    rng = np.random.default_rng(0)
    pd, colocated = Oracle(prompt_only=True), Oracle()
    prompt = rng.integers(0, 1000, 200)
    previous = 0  # the previous prompt's length
    missed = 0
    for k in range(5):
        output = rng.integers(1000, 2000, 50 + 10 * k)
        a = pd.observe(10.0 * k, 10.0 * k + 1, prompt, output)
        b = colocated.observe(10.0 * k, 10.0 * k + 1, prompt, output)
        assert a == previous  # the previous prompt, never its answer
        missed += b - a
        previous = len(prompt)
        prompt = np.concatenate((prompt, output, rng.integers(0, 1000, 20)))
    assert missed == sum(50 + 10 * k for k in range(4)) and colocated.reuse > pd.reuse


def test_a_prompt_enters_the_pd_oracle_when_its_prefill_ends():
    """The caller passes the prefill's end as the insertion time: a request arriving after it finds the prompt."""
    o = Oracle(prompt_only=True)
    prompt = np.arange(100)
    o.observe(0.0, 1.0, prompt, np.arange(1000, 1010))
    assert o.observe(0.5, 2.0, prompt, [7]) == 0  # before the first prefill's end
    assert o.observe(1.0, 2.0, np.concatenate((prompt, [5, 6])), [7]) == 100  # after it: the prompt, no output
