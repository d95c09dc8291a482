"""Token checkpoints: the ``default`` TITO merge, the prefix invariant, and the int64 buffer behind them.

After each model turn a session keeps a checkpoint, ``prompt_token_ids + output ids``. The next turn
sends ``input_ids`` = the checkpoint it continues + ``render(appended messages, False)`` +
``GENERATION_PROMPT`` (the ``default`` TITO model: plain concatenation, ``max_trim_tokens=0``), and
its answer must start with that checkpoint (the prefix invariant). Checkpoints are read-only int64
views of one ``TokenBuffer`` per session: built with O(new tokens) Python work, compared as bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from testbed_common.tokenizer import render_ids

MAX_TRIM_TOKENS = 0  # the `default` TITO model: plain concatenation
EMPTY_IDS = np.empty(0, dtype=np.int64)  # a first turn's base checkpoint
EMPTY_IDS.flags.writeable = False


def prefix_mismatch(ids: np.ndarray, base: np.ndarray) -> int | None:
    """None when ``ids`` start with ``base`` (less its last ``MAX_TRIM_TOKENS``), else the first index where they
    differ."""
    cut = len(base) - MAX_TRIM_TOKENS
    if cut <= 0 or (len(ids) >= cut and ids[:cut].tobytes() == base[:cut].tobytes()):  # compare the bytes
        return None
    n = min(len(ids), cut)
    differ = np.flatnonzero(ids[:n] != base[:n])
    return int(differ[0]) if len(differ) else n


class TokenBuffer:
    """One session's int64 ids: checkpoints and sent ``input_ids`` are read-only prefix views of ``array``. Ids
    are only ever written at ``end`` (so no view's ids change), which appends a turn's ids without copying the
    context."""

    __slots__ = ("array", "end", "view")

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.end = 0
        self.view: np.ndarray | None = None  # ``array``, read-only: views are sliced from it

    def extend(self, head: np.ndarray, tail: np.ndarray | list[int]) -> np.ndarray:
        """``head + tail`` as a read-only int64 view of the buffer: written in place after ``head`` when
        ``head`` is the buffer's written prefix (the usual next turn), else into a new array (first turn,
        rollback, an answer that did not echo the ids sent, a turn that failed after its ids were written).
        ``tail`` is an int64 array, or the list ``render_ids`` gives for short texts."""
        n, m = len(head), len(tail)
        buf = self.array
        if buf is None or head.base is not buf or n != self.end or n + m > len(buf):
            new = np.empty(max(2 * (n + m), 1024), dtype=np.int64)
            new[:n] = head
            buf = self.array = new
            ro = self.view = new.view()
            ro.flags.writeable = False
        buf[n : n + m] = tail
        self.end = n + m
        return self.view[: n + m]  # read-only, and its base is ``buf`` (numpy collapses view chains)

    def merge(self, base: np.ndarray, appended: list[Mapping[str, Any]]) -> np.ndarray:
        """The ``default`` TITO merge: ``base`` verbatim + the appended messages + the generation prompt
        (``render(appended, add_generation_prompt=True)``), in this buffer."""
        return self.extend(base, render_ids(appended))
