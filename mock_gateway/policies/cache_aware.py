"""``cache_aware`` (SMG ``policies/cache_aware.rs``, tree mode): prefix affinity with a spill gate.

The routing text (message texts joined by single spaces; token ids for token requests) is matched
in a radix tree per model. If ``matched / input > --cache-threshold`` the healthy holders of the
deepest matched node are the candidates; those that do not trip the spill gate are ranked by expected
wait (``tree_match``); if all trip it, the request spills to the expected-wait choice among the
ungated workers (``spill``). Otherwise expected wait over every worker (``expected_wait_fallback``).
The whole text is then inserted for the chosen worker. Spill gate (1.13.0): ``load > avg * rel``
and ``load > avg + min(abs, max(4, 2 * sqrt(avg)))``, loads being the gateway's in-flight counts.
Trees are trimmed to ``--max-tree-size`` every ``--eviction-interval-secs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mock_gateway import selector
from mock_gateway.char_tree import CharTree
from mock_gateway.policies.base import Choice, Periodic, Policy, PolicyContext, RouteInput
from mock_gateway.workers import Worker


def spill_margin(avg: float, abs_threshold: float) -> float:
    return min(abs_threshold, max(4.0, 2.0 * math.sqrt(avg)))


class CacheAwarePolicy(Policy):
    name = "cache_aware"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        self.trees: dict[str, CharTree] = {}
        self._eviction = Periodic()

    def tree(self, model: str) -> CharTree:
        t = self.trees.get(model)
        if t is None:
            t = self.trees[model] = CharTree()
        return t

    def on_worker_added(self, worker: Worker) -> None:
        self.tree(worker.model).insert("", worker.url)

    def on_worker_removed(self, url: str) -> None:
        for t in self.trees.values():
            t.remove_tenant(url)

    def gated(self, workers: list[Worker]) -> set[str]:
        cfg = self.ctx.config
        avg = sum(w.load for w in workers) / len(workers)
        margin = spill_margin(avg, cfg.balance_abs_threshold)
        return {w.url for w in workers if w.load > avg * cfg.balance_rel_threshold and w.load > avg + margin}

    def kv_imbalanced(self, workers: list[Worker]) -> bool:
        cfg = self.ctx.config
        usage = [w.report.token_usage for w in workers if w.report is not None]
        if not usage:
            return False
        over = cfg.overload_token_usage_threshold < 1.0 and max(usage) > cfg.overload_token_usage_threshold
        spread = cfg.balance_token_usage_threshold < 1.0 and max(usage) - min(usage) > cfg.balance_token_usage_threshold
        return over or spread

    def _ew(self, cands: Sequence[Worker], req: RouteInput) -> Worker:
        return selector.select(cands, self.ctx.config, self.ctx.rng, req.now, self.ctx.dispatch_tokens(req))

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        m = self.ctx.metrics
        if not workers:
            return Choice(None)
        seq: Sequence = tuple(req.tokens) if req.tokens else req.text
        tree = self.tree(workers[0].model)
        walk = None
        if self.kv_imbalanced(workers):
            chosen, branch = self._ew(workers, req), None
        else:
            matched, tenants, walk = tree.match_walk(seq)
            rate = matched / len(seq) if seq else 0.0
            m.ca_match_ratio.observe(rate)
            if rate > self.ctx.config.cache_threshold:
                by_url = {w.url: w for w in workers}
                holders = [by_url[t] for t in tenants if t in by_url]
                gated = self.gated(workers)
                safe = [w for w in holders if w.url not in gated]
                if safe:
                    chosen = self._ew(safe, req)
                else:
                    chosen = self._ew([w for w in workers if w.url not in gated] or workers, req)
                branch = "tree_match" if chosen in holders else "spill"
            else:
                chosen, branch = self._ew(workers, req), "expected_wait_fallback"
        tree.insert(seq, chosen.url, walk)
        if branch is not None:
            m.counts(m.ca_branch)[branch].inc()
        return Choice(chosen.url, branch)

    def tick(self, now: float) -> None:
        if not self._eviction.due(now, self.ctx.config.eviction_interval_secs):
            return
        for model, t in self.trees.items():
            t.evict(self.ctx.config.max_tree_size)
            self.ctx.metrics.cache_tree_chars.labels(model=model).set(t.total_size())
