"""``round_robin`` (SMG ``policies/round_robin.rs``): one global counter over the available list."""

from __future__ import annotations

from mock_gateway.policies.base import Choice, Policy, PolicyContext, RouteInput
from mock_gateway.workers import Worker


class RoundRobinPolicy(Policy):
    name = "round_robin"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        self.counter = 0

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        if not workers:
            return Choice(None)
        url = workers[self.counter % len(workers)].url
        self.counter += 1
        return Choice(url)
