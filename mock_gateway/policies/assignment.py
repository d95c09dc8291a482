"""``--assignment-mode``: how ``manual`` picks a worker for a key it places, as strategies.

``ManualPolicy`` calls ``choose`` for a new key (``vacant``), a key whose candidates are all unhealthy
(``occupied_miss``), a request without a routing key (``no_routing_id``) and a sticky ``cap_respill``.
SMG's modes (``policies/manual.rs``): ``random``; ``min_load`` (the gateway's in-flight count);
``min_group`` (distinct keys in flight); ``delegate`` (min_load for manual itself; under the sticky
override the wrapped policy chooses). Ties are broken uniformly with the seeded RNG.

SMG's modes only choose. The other hooks let a testbed strategy (``testbed/min_kv.py``) track what manual
routes and move pinned keys; manual calls them from its own ``select`` only, never on the sticky override's
shared map. A new mode is one ``Assignment`` subclass and one line in ``factory.ASSIGNMENT_CLASSES``.
"""

from __future__ import annotations

from typing import ClassVar

from mock_gateway.policies.base import Policy, PolicyContext, RouteInput
from mock_gateway.workers import Worker


class Assignment:
    """One assignment mode of ``manual``."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    def choose(self, workers: list[Worker], req: RouteInput) -> Worker:
        """The worker for a key being placed (``workers`` is not empty)."""
        raise NotImplementedError

    def begin(self, workers: list[Worker], req: RouteInput) -> None:
        """Before each decision of manual's ``select``: update what the strategy measures."""

    def repin(self, workers: list[Worker], key: str, pinned: Worker, now: float) -> tuple[Worker, str] | None:
        """Where to move ``key`` off its healthy pinned worker instead of an ``occupied_hit``, and the branch
        label; None to stay."""
        return None

    def routed(self, key: str, url: str, now: float) -> None:
        """After manual's ``select`` sent the keyed request to ``url``."""

    def forget(self, keys: list[str]) -> None:
        """Manual evicted these idle keys."""

    def on_worker_removed(self, url: str) -> None:
        pass


def min_by(ctx: PolicyContext, workers: list[Worker], values: list[int]) -> Worker:
    """Uniformly one of the workers with the smallest value."""
    best = min(values)
    return ctx.rng.choice([w for w, v in zip(workers, values, strict=True) if v == best])


class RandomAssignment(Assignment):
    name = "random"

    def choose(self, workers: list[Worker], req: RouteInput) -> Worker:
        return self.ctx.rng.choice(workers)


class MinLoadAssignment(Assignment):
    name = "min_load"

    def choose(self, workers: list[Worker], req: RouteInput) -> Worker:
        return min_by(self.ctx, workers, [w.load for w in workers])


class MinGroupAssignment(Assignment):
    name = "min_group"

    def choose(self, workers: list[Worker], req: RouteInput) -> Worker:
        return min_by(self.ctx, workers, [len(w.key_load) for w in workers])


class DelegateAssignment(MinLoadAssignment):
    """The wrapped policy's choice under the sticky override; min_load for manual itself, or when the wrapped
    policy chooses no available worker."""

    name = "delegate"

    def __init__(self, ctx: PolicyContext, delegate: Policy | None = None) -> None:
        super().__init__(ctx)
        self.delegate = delegate

    def choose(self, workers: list[Worker], req: RouteInput) -> Worker:
        if self.delegate is not None:
            url = self.delegate.select(workers, req).url
            for w in workers:
                if w.url == url:
                    return w
        return super().choose(workers, req)
