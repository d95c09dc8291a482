"""The workload's named random streams: one seed per stream of a scenario's seed.

``stream_seed`` hashes the scenario's seed with a stream's keys (``SeedSequence.generate_state``, numpy's public
API); the texts then key a ``Philox`` with it (``testbed_common.tokenizer.keyed_generator``), and a tool output adds
its (session, turn) as the key's second word (``turn_stream``): Philox needs no hash between a key and a stream, so
a session's thousands of tool texts cost one ``stream_seed``.
"""

from __future__ import annotations

import numpy as np

SYSTEM_STREAM, TASK_STREAM, TOOL_STREAM, PLAN_STREAM = 1, 2, 3, 4


def stream_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed for one named stream (system prompt, a task, the tools, the plans)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, *keys])
    return int(ss.generate_state(2, dtype=np.uint64)[0])


def turn_stream(session: int, turn: int) -> int:
    """The stream of one session's turn under a stream seed (a ``keyed_generator`` stream): both in [0, 2**32)."""
    if not (0 <= session < 1 << 32 and 0 <= turn < 1 << 32):
        raise ValueError(f"turn_stream: session {session} and turn {turn} must be within [0, 2**32)")
    return session << 32 | turn
