"""Token checkpoints: the ``default`` TITO merge, the prefix invariant, and the int64 buffer behind them.

After each model turn a session keeps a checkpoint, ``prompt_token_ids + output ids``. The next turn
sends ``input_ids`` = the checkpoint it continues + ``render(appended messages, False)`` +
``GENERATION_PROMPT`` (the ``default`` TITO model: plain concatenation, ``max_trim_tokens=0``), and
its answer must start with that checkpoint (the prefix invariant). Checkpoints are lists, or in a
``token_arrays`` core read-only int64 views of one ``TokenBuffer`` per session: same ids, built with
O(new tokens) Python work.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

import numpy as np

from testbed_common import tokenizer as tok
from testbed_common.tokenizer import render_ids

MAX_TRIM_TOKENS = 0  # the `default` TITO model: plain concatenation
EMPTY_IDS = np.empty(0, dtype=np.int64)  # a first turn's base checkpoint in a ``token_arrays`` core
EMPTY_IDS.flags.writeable = False


def merge_tokens(checkpoint: list[int], appended: list[Mapping[str, Any]]) -> list[int]:
    """The ``default`` TITO merge: stored tokens verbatim + appended messages + generation prompt."""
    new = tok.render(appended, add_generation_prompt=True)  # == render(appended, False) + GENERATION_PROMPT
    return checkpoint + new if type(checkpoint) is list else [*checkpoint, *new]


def as_list(ids: list[int] | np.ndarray) -> list[int]:
    return ids.tolist() if isinstance(ids, np.ndarray) else ids


def prefix_mismatch(ids: list[int] | np.ndarray, base: list[int] | np.ndarray) -> int | None:
    """None when ``ids`` start with ``base`` (less its last ``MAX_TRIM_TOKENS``), else the first index where they
    differ. ``ids`` is an array only when ``base`` is one (see ``TokenBuffer.checkpoint``)."""
    cut = len(base) - MAX_TRIM_TOKENS
    if isinstance(ids, np.ndarray):  # base is an array too: compare the bytes
        ok = cut <= 0 or (len(ids) >= cut and ids[:cut].tobytes() == base[:cut].tobytes())
    else:
        base = as_list(base)
        ok = ids[:cut] == base[:cut]
    if ok:
        return None
    ids, base = as_list(ids), as_list(base)
    return next((i for i, (a, b) in enumerate(zip(ids, base, strict=False)) if a != b), min(len(ids), cut))


class TokenBuffer:
    """One session's int64 ids (``token_arrays`` cores only): checkpoints and sent ``input_ids`` are read-only
    prefix views of ``array``. Ids are only ever written at ``end`` (so no view's ids change), which appends a
    turn's ids without copying the context."""

    __slots__ = ("array", "end", "view")

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.end = 0
        self.view: np.ndarray | None = None  # ``array``, read-only: views are sliced from it

    def extend(self, head: np.ndarray, tail: list[int]) -> np.ndarray:
        """``head + tail`` as a read-only int64 view of the buffer: written in place after ``head`` when
        ``head`` is the buffer's written prefix (the usual next turn), else into a new array (first turn,
        rollback, a turn that failed after its ids were written). Raises OverflowError for ids beyond int64."""
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

    def merge(self, base: list[int] | np.ndarray, appended: list[Mapping[str, Any]]) -> list[int] | np.ndarray:
        """``merge_tokens(base, appended)``; for an array base the same ids in this buffer, with O(new tokens)
        Python work."""
        if isinstance(base, np.ndarray):
            return self.extend(base, render_ids(appended))
        return merge_tokens(base, appended)

    def checkpoint(
        self, prompt: list[int] | np.ndarray, output: list[int], base: list[int] | np.ndarray
    ) -> list[int] | np.ndarray:
        """``prompt + output`` (validated ints) as the session keeps it: a read-only int64 array when the base is
        one (a ``token_arrays`` core) and every id fits, else a list."""
        if isinstance(base, np.ndarray):
            try:
                if isinstance(prompt, np.ndarray):  # an in-process upstream's array: no per-id work
                    return self.extend(prompt, output)
                else:
                    arr = np.fromiter(chain(prompt, output), np.int64, len(prompt) + len(output))
            except OverflowError:
                pass
            else:
                arr.flags.writeable = False
                return arr
        return as_list(prompt) + as_list(output)
