"""``--routing-key-override`` (sticky sessions, SMG ``policies/registry.rs`` ``select_sticky``).

Wraps every policy except manual and consistent_hashing: a request with a key (a valid configured
header, else the body ``rid``; lineage suffixes ``_r<n>`` then ``_t<n>`` stripped) goes through one
shared manual map; a pinned worker with 2 or more in-flight requests for the key is bypassed
(``cap_respill``) and the pin moves if the new worker is itself under the cap. The default
assignment is ``delegate``: the wrapped policy chooses and its choice is pinned (the factory gives the
shared map a ``DelegateAssignment`` of the wrapped policy). Requests without a key go to the wrapped
policy unchanged.
"""

from __future__ import annotations

from mock_gateway.policies.base import Choice, Policy, PolicyContext, RouteInput
from mock_gateway.policies.manual import ManualPolicy
from mock_gateway.routing_key import sticky_key
from mock_gateway.workers import Worker

STICKY_INFLIGHT_CAP = 2
UNWRAPPED = frozenset({"manual", "consistent_hashing"})


class StickyOverride(Policy):
    def __init__(self, ctx: PolicyContext, inner: Policy, sticky: ManualPolicy) -> None:
        super().__init__(ctx)
        self.inner = inner
        self.name = inner.name
        self.sticky = sticky

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        found = sticky_key(req.headers, req.body, self.ctx.config.routing_key_headers)
        if found is None:
            return self.inner.select(workers, req)
        key, source = found
        self.ctx.metrics.counts(self.ctx.metrics.key_source)[source].inc()
        return self.sticky.route(workers, key, req, cap=STICKY_INFLIGHT_CAP)

    def on_worker_added(self, worker: Worker) -> None:
        self.inner.on_worker_added(worker)

    def on_worker_removed(self, url: str) -> None:
        self.inner.on_worker_removed(url)

    def tick(self, now: float) -> None:
        self.sticky.tick(now)
        self.inner.tick(now)
