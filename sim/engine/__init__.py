"""The pure worker engines (arrival-time ``Engine``, iteration-level ``IterationEngine``): no I/O, time passed in."""

from .core import Engine
from .latency import decode_step_time, decode_time, prefill_time
from .radix import Node, RadixCache
from .scheduler import IterationEngine
from .storage import L3Store, StorageTier, page_keys
from .types import (
    EngineLoad,
    EngineStats,
    FinishedRequest,
    HiCacheConfig,
    IterationTiming,
    LatencyModel,
    RequestTiming,
    SchedulerConfig,
    WorkerConfig,
)

__all__ = [
    "Engine",
    "EngineLoad",
    "EngineStats",
    "FinishedRequest",
    "HiCacheConfig",
    "IterationEngine",
    "IterationTiming",
    "L3Store",
    "LatencyModel",
    "Node",
    "RadixCache",
    "RequestTiming",
    "SchedulerConfig",
    "StorageTier",
    "WorkerConfig",
    "decode_step_time",
    "decode_time",
    "page_keys",
    "prefill_time",
]
