"""Built-in trace samples, shipped in the package so that replay's examples run from a fresh clone.

``conversation``: the first 200 requests of the Mooncake FAST'25 conversation trace (kvcache-ai/Mooncake,
``FAST25-release/traces/conversation_trace.jsonl``), in ``sim/replay/data/``.
"""

from __future__ import annotations

from difflib import get_close_matches
from importlib import resources
from pathlib import Path

from sim.replay.mooncake import TraceError

SAMPLES: dict[str, str] = {"conversation": "mooncake_conversation_200.jsonl"}  # name -> file in sim/replay/data/


def sample_path(name: str) -> Path:
    """The packaged file of a built-in sample."""
    return Path(str(resources.files("sim.replay").joinpath("data", SAMPLES[name])))


def resolve_trace(trace: str) -> str:
    """A trace file's path as given, or the packaged file of a built-in sample name (a file of that name wins)."""
    if Path(trace).is_file():
        return trace
    if trace in SAMPLES:
        return str(sample_path(trace))
    close = get_close_matches(trace, list(SAMPLES), n=1)
    hint = f" (did you mean the sample {close[0]!r}?)" if close else ""
    raise TraceError(f"trace file not found: {trace}{hint}; built-in samples: {', '.join(SAMPLES)}")
