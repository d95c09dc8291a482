"""``random`` (SMG ``policies/random.rs``): uniform over the available workers; ``passthrough`` (one backend)."""

from __future__ import annotations

from mock_gateway.policies.base import Choice, Policy, RouteInput
from mock_gateway.workers import Worker


class RandomPolicy(Policy):
    name = "random"

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        return Choice(self.ctx.rng.choice(workers).url if workers else None)


class PassthroughPolicy(Policy):
    """One backend, no balancing: the first available worker."""

    name = "passthrough"

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        return Choice(workers[0].url if workers else None)
