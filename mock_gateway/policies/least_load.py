"""``least_load`` (SMG ``policies/least_load.rs``): argmin expected wait over the available workers."""

from __future__ import annotations

from mock_gateway import selector
from mock_gateway.policies.base import Choice, Policy, RouteInput
from mock_gateway.workers import Worker


class LeastLoadPolicy(Policy):
    name = "least_load"

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        if not workers:
            return Choice(None)
        w = selector.select(workers, self.ctx.config, self.ctx.rng, req.now, self.ctx.dispatch_tokens(req))
        return Choice(w.url)
