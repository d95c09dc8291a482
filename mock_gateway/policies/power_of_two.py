"""``power_of_two`` (SMG ``policies/power_of_two.rs``): two distinct random candidates, the lower score wins.

``--power-of-two-load-metric expected_wait`` (default) compares expected-wait scores and credits the
winner; ``requests`` / ``least_requests`` compare the gateway's in-flight counts (source not found;
this is the spec's presumption).
"""

from __future__ import annotations

from mock_gateway import selector
from mock_gateway.policies.base import Choice, Policy, RouteInput
from mock_gateway.workers import Worker


class PowerOfTwoPolicy(Policy):
    name = "power_of_two"

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        n = len(workers)
        if n == 0:
            return Choice(None)
        if n == 1:
            return Choice(workers[0].url)
        rng = self.ctx.rng
        i1 = rng.randrange(n)
        i2 = (i1 + 1 + rng.randrange(n - 1)) % n
        a, b = workers[i1], workers[i2]
        cfg = self.ctx.config
        if cfg.power_of_two_load_metric == "expected_wait":
            sa, sb = selector.scores([a, b], cfg, req.now)
            win = a if sa <= sb else b
            selector.credit(win, self.ctx.dispatch_tokens(req), req.now)
        else:
            win = a if a.load <= b.load else b
        return Choice(win.url)
