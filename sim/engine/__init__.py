"""The pure worker engine: radix prefix cache, latency model and request timelines (no I/O, time passed in)."""

from .core import Engine
from .latency import decode_step_time, decode_time, prefill_time
from .radix import Node, RadixCache
from .types import EngineLoad, EngineStats, LatencyModel, RequestTiming, WorkerConfig

__all__ = [
    "Engine",
    "EngineLoad",
    "EngineStats",
    "LatencyModel",
    "Node",
    "RadixCache",
    "RequestTiming",
    "WorkerConfig",
    "decode_step_time",
    "decode_time",
    "prefill_time",
]
