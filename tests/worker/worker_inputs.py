"""Shared inputs of the worker tests: a small core and Hypothesis strategies for conversations."""

from __future__ import annotations

from hypothesis import strategies as st

from sim.engine.types import WorkerConfig
from sim.worker.core import WorkerCore

words = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
contents = st.lists(words, min_size=0, max_size=12).map(" ".join)
roles = st.sampled_from(["system", "user", "assistant", "tool"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1, max_size=6)


def core(name: str = "w0", seed: int = 7, **kw) -> WorkerCore:
    return WorkerCore(WorkerConfig(name=name, kv_capacity_tokens=kw.pop("kv", 50_000)), seed=seed, **kw)
