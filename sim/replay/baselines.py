"""Reuse baselines computed from a trace alone (no routing, no latency model).

A trace is reduced to a sequence of requests in send order, each a list of *segments*
``(key, length)``: equal keys stand for the same token string, and a shorter length is a prefix of it
(a partial last Mooncake block). Two requests share exactly the tokens of their common leading
segments, plus the shorter length of the first segment they have in common with different lengths
(segments with different keys differ at their first token, which ``sim.replay.mooncake.block_tokens``
guarantees and the sessions replay approximates). After a request, its prompt *and* its output (one
segment of its own) are cached, as the worker engine does.

Both baselines follow the engine's rule that at most ``prompt - 1`` tokens are taken from a cache,
and let every earlier request be visible (zero service time):

- ``single_pool``: one infinite cache that sees every request: cached = the longest prefix shared
  with any earlier request.
- ``random_baseline``: the *exact expectation* under uniform random routing over ``n`` workers with
  unbounded caches. Request ``i`` holds ``L`` cached tokens iff some earlier request ``j`` with
  ``lcp(i, j) >= L`` went to its worker; placements are independent, so with ``c(L)`` such earlier
  requests ``P(cached >= L) = 1 - (1 - 1/n)^c(L)`` and ``E[cached] = sum_L P(cached >= L)``. ``c(L)`` is
  a step function read off a segment trie holding, per node, how many earlier requests passed it
  and with which lengths; no sampling, no seed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

Segment = tuple[Hashable, int]


class _Node:
    __slots__ = ("children", "lengths")

    def __init__(self) -> None:
        self.children: dict[Hashable, _Node] = {}
        self.lengths: dict[int, int] = {}  # in-segment length -> earlier requests that passed with it


@dataclass
class Baselines:
    """Running totals; feed ``observe`` in send order, read ``single_pool_reuse``/``random_baseline_reuse``."""

    workers: int
    prompt_tokens: int = 0
    single_pool_cached: int = 0
    random_expected_cached: float = 0.0
    requests: int = 0
    _root: _Node = field(default_factory=_Node, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be >= 1")

    def steps(self, prompt: Sequence[Segment]) -> list[tuple[int, int]]:
        """``c(L)`` as ``[(upto, count)]``: for ``L`` in ``(previous upto, upto]`` exactly ``count`` earlier
        requests share at least ``L`` tokens with ``prompt`` (counts nonincreasing, zero counts omitted)."""
        out: list[tuple[int, int]] = []
        node, base = self._root, 0
        for key, x in prompt:
            child = node.children.get(key)
            if child is None or x <= 0:
                break
            ge = 0  # earlier requests with an in-segment length >= the current y
            pieces = sorted(child.lengths.items(), reverse=True)
            # walk lengths from long to short: for y in (l_next, l], count = #{len >= l}
            below: list[tuple[int, int]] = []
            for length, cnt in pieces:
                ge += cnt
                below.append((length, ge))
            # below is descending in length with increasing counts; emit ascending in y
            prev = 0
            for length, cnt in reversed(below):
                hi = min(length, x)
                if hi > prev:
                    out.append((base + hi, cnt))
                    prev = hi
                if hi >= x:
                    break
            if not child.lengths or max(child.lengths) < x:
                break  # every earlier request ends inside this segment
            base += x
            node = child
        return out

    def _insert(self, segments: Iterable[Segment]) -> None:
        node = self._root
        for key, x in segments:
            if x <= 0:
                break
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node()
            child.lengths[x] = child.lengths.get(x, 0) + 1
            node = child

    def observe(self, prompt: Sequence[Segment], output: Segment | None = None) -> tuple[int, float]:
        """Account one request (its prompt segments, then its output segment); returns
        (single-pool cached tokens, expected cached tokens under random routing)."""
        total = sum(x for _, x in prompt)
        cap = max(total - 1, 0)
        q = 1.0 - 1.0 / self.workers
        single = 0
        expected = 0.0
        lo = 0
        for upto, cnt in self.steps(prompt):
            hi = min(upto, cap)
            if hi > lo:
                single = hi
                expected += (hi - lo) * (1.0 - q**cnt)
                lo = hi
            if upto >= cap:
                break
        self._insert([*prompt, *([output] if output is not None else [])])
        self.prompt_tokens += total
        self.single_pool_cached += single
        self.random_expected_cached += expected
        self.requests += 1
        return single, expected

    @property
    def single_pool_reuse(self) -> float:
        return self.single_pool_cached / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def random_baseline_reuse(self) -> float:
        return self.random_expected_cached / self.prompt_tokens if self.prompt_tokens else 0.0


def compute(requests: Iterable[tuple[Sequence[Segment], Segment | None]], workers: int) -> Baselines:
    """Both baselines of a request stream (``(prompt segments, output segment)`` in send order)."""
    b = Baselines(workers)
    for prompt, output in requests:
        b.observe(prompt, output)
    return b
