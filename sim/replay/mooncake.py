"""Mooncake traces: loading, block ids to token ids, and the derived routing key.

A Mooncake line is ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``;
each hash id stands for a 512-token block and the last block may be partial. ``block_tokens`` turns a
request into ``n`` deterministic int64 token ids: block ``b`` always gives the same 512 ids, so two
requests share exactly ``k * 512`` tokens when they share their first ``k`` ids (and, when the shared
``k``-th id is a partial last block, the shorter of the two partial lengths). The first token of block
``b`` is ``FIRST_TOKEN + b`` (injective), so prompts that differ in a block id differ at that block's
first token; the other 511 come from a fixed 64-bit mix of ``(b, position)``. Ids stay within u32.

Routing key (``derive_keys``): let ``k`` be the number of leading blocks shared by *every* request of
the replayed trace (1 for the conversation trace: block 0 is a global system prefix). A request's key
is ``"mc-<id>"`` of its block at position ``k`` (the first block not shared by all requests), or of
its last block if it has no block there. Requests of one conversation share that block, so the key
groups a conversation the way a session id would.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 512
FIRST_TOKEN = 1000  # first token of block b is FIRST_TOKEN + b
TOKEN_SPACE = (1 << 32) - FIRST_TOKEN
_POS = np.arange(BLOCK, dtype=np.uint64)


class TraceError(ValueError):
    """A trace file or line that cannot be replayed."""


@dataclass(frozen=True)
class MooncakeRequest:
    index: int  # line order in the file
    timestamp: float  # seconds from the start of the trace
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def block_lengths(self) -> list[int]:
        """Tokens of each block in this request (512, except a partial last one)."""
        n = len(self.hash_ids)
        return [BLOCK] * (n - 1) + [self.input_length - BLOCK * (n - 1)] if n else []


def _int(v: object, what: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < minimum:
        raise TraceError(f"{what} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def parse_line(obj: object, index: int) -> MooncakeRequest:
    where = f"line {index + 1}"
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object")
    for f in ("timestamp", "input_length", "output_length", "hash_ids"):
        if f not in obj:
            raise TraceError(f"{where}: missing field {f!r}")
    ts = obj["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < 0 or ts != ts or ts == float("inf"):
        raise TraceError(f"{where}: timestamp must be a finite number >= 0 (milliseconds)")
    n = _int(obj["input_length"], f"{where}: input_length", 1)
    m = _int(obj["output_length"], f"{where}: output_length", 1)
    ids = obj["hash_ids"]
    if not isinstance(ids, list) or not ids:
        raise TraceError(f"{where}: hash_ids must be a non-empty list")
    hids = tuple(_int(b, f"{where}: hash_ids", 0) for b in ids)
    if max(hids) >= TOKEN_SPACE:
        raise TraceError(f"{where}: hash ids must be < {TOKEN_SPACE}")
    if not BLOCK * (len(hids) - 1) < n <= BLOCK * len(hids):
        raise TraceError(f"{where}: input_length {n} does not fit {len(hids)} blocks of {BLOCK} tokens")
    return MooncakeRequest(index, float(ts) / 1000.0, n, m, hids)


def load_mooncake(path: str | Path, limit: int | None = None) -> list[MooncakeRequest]:
    """The requests of a Mooncake JSONL file (first ``limit`` lines), sorted by timestamp (stable)."""
    out: list[MooncakeRequest] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise TraceError(f"line {i + 1}: not JSON: {e}") from e
            out.append(parse_line(obj, len(out)))
    if not out:
        raise TraceError(f"{path}: no requests")
    out.sort(key=lambda r: (r.timestamp, r.index))
    return out


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised (uint64 arrays wrap around silently, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def block_tokens(hash_ids: Sequence[int], input_length: int) -> np.ndarray:
    """The ``input_length`` token ids (int64) of a request made of ``hash_ids`` blocks."""
    ids = np.asarray(hash_ids, dtype=np.uint64).reshape(-1)
    x = (ids[:, None] * np.uint64(0x9E3779B97F4A7C15) + _POS[None, :] + np.uint64(1)).ravel()
    tok = (np.uint64(FIRST_TOKEN) + _mix(x) % np.uint64(TOKEN_SPACE)).astype(np.int64)
    tok[::BLOCK] = FIRST_TOKEN + ids.astype(np.int64)
    return tok[:input_length]


class BlockCache:
    """Token ids per block for a replay, each block computed once while it has further uses.

    ``request(r)`` gives both forms a replay needs: the int64 array (for the engines) and the Python
    list (for the gateway's body). Blocks that later requests use again (``remaining``, counted over
    the replayed requests; None: assume every block recurs) are kept, as an array and a tuple of ints,
    until their last use or until ``capacity`` blocks are held (least recently used first); a request's
    list is assembled from those tuples, so requests share int objects (what a gateway's token tree
    holds), and only its new tokens go through ``tolist``.
    """

    def __init__(self, capacity: int = 16384, remaining: dict[int, int] | None = None) -> None:
        self.capacity = capacity
        self.remaining = remaining
        self._blocks: OrderedDict[int, tuple[np.ndarray, tuple[int, ...]]] = OrderedDict()

    @classmethod
    def for_requests(cls, requests: Iterable[MooncakeRequest], capacity: int = 16384) -> BlockCache:
        counts: dict[int, int] = {}
        for r in requests:
            for b in dict.fromkeys(r.hash_ids):
                counts[b] = counts.get(b, 0) + 1
        return cls(capacity, counts)

    def request(self, r: MooncakeRequest) -> tuple[np.ndarray, list[int]]:
        blocks, remaining = self._blocks, self.remaining
        new = [b for b in dict.fromkeys(r.hash_ids) if b not in blocks]
        fresh: dict[int, np.ndarray] = {}
        if new:
            arr = block_tokens(new, BLOCK * len(new)).reshape(len(new), BLOCK)
            fresh = {b: arr[i] for i, b in enumerate(new)}
        parts: list[np.ndarray] = []
        ids: list[int] = []
        run_start = -1  # first position of a run of blocks without a cached tuple
        for i, b in enumerate(r.hash_ids):
            hit = blocks.get(b)
            if hit is None:
                parts.append(fresh[b])
                if run_start < 0:
                    run_start = i
            else:
                parts.append(hit[0])
                if run_start >= 0:
                    ids.extend(np.concatenate(parts[run_start:i]).tolist())
                    run_start = -1
                ids.extend(hit[1])
        if run_start >= 0:
            ids.extend(np.concatenate(parts[run_start:]).tolist())
        del ids[r.input_length :]
        out = np.concatenate(parts)[: r.input_length]
        # keep what later requests use again; drop what they never will
        for b in dict.fromkeys(r.hash_ids):
            if remaining is None:
                left = 1
            else:
                left = remaining.get(b, 1) - 1
                remaining[b] = left
            if left <= 0:
                blocks.pop(b, None)
            elif b in blocks:
                blocks.move_to_end(b)
            else:
                blk = fresh[b]
                blocks[b] = (blk, tuple(blk.tolist()))
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
        return out, ids


def common_block_prefix(requests: Iterable[MooncakeRequest]) -> int:
    """How many leading block ids every request shares (0 if some request differs at the first)."""
    prefix: tuple[int, ...] | None = None
    for r in requests:
        if prefix is None:
            prefix = r.hash_ids
            continue
        k = 0
        for a, b in zip(prefix, r.hash_ids, strict=False):
            if a != b:
                break
            k += 1
        prefix = prefix[:k]
        if not prefix:
            return 0
    return len(prefix or ())


def derive_keys(requests: Sequence[MooncakeRequest]) -> list[str]:
    """One routing key per request (see the module docstring), in the order given."""
    k = common_block_prefix(requests)
    return [f"mc-{r.hash_ids[min(k, len(r.hash_ids) - 1)]}" for r in requests]
