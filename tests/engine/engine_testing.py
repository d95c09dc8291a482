"""What the engine tests share: token ids from a seed, an engine that checks its invariants after every decision,
and a decode worker's configuration."""

from __future__ import annotations

import numpy as np

from sim.engine import IterationEngine, WorkerConfig


def ids(seed: int, n: int) -> np.ndarray:
    """``n`` token ids drawn from ``seed``: distinct sequences for distinct seeds."""
    return np.random.default_rng(seed).integers(1000, 2**32, n, dtype=np.int64)


class Checked(IterationEngine):
    """The engine, checking its invariants (KV within the pool, host pages within the host pool, the private KV
    sum) after every decision."""

    def _decide(self, t: float) -> None:
        super()._decide(t)
        self.check()


def decode_config(kv: int | None = 20_000, radix: bool = False, reserved: int = 512, **kw) -> WorkerConfig:
    """A PD decode worker on the iteration-level engine."""
    return WorkerConfig(kv_capacity_tokens=kv, engine="iteration", disaggregation_mode="decode",
                        decode_radix_cache=radix, num_reserved_decode_tokens=reserved, **kw)
