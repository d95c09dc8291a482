"""The pure worker engines (arrival-time ``Engine``, iteration-level ``IterationEngine``): no I/O, time passed in."""

from .core import Engine
from .latency import decode_step_time, decode_time, prefill_time
from .radix import Node, RadixCache
from .scheduler import IterationEngine
from .types import (
    EngineLoad,
    EngineStats,
    FinishedRequest,
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
    "IterationEngine",
    "IterationTiming",
    "LatencyModel",
    "Node",
    "RadixCache",
    "RequestTiming",
    "SchedulerConfig",
    "WorkerConfig",
    "decode_step_time",
    "decode_time",
    "prefill_time",
]
