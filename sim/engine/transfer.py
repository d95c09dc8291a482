"""The PD KV transfer: what each side of a bootstrap room tells, and when the decode side has the prompt's KV.

SGLang 0.5.23 (``disaggregation/prefill.py``, ``disaggregation/decode.py``; shared/specs/pd-hicache.md section 2):
the prefill worker sends the KV chunk by chunk after each chunked-prefill forward (``send_kv_chunk``) to the decode
worker that shares the request's ``bootstrap_room``, once that worker has pre-allocated the request's KV (the decode
side's ``pop_preallocated`` hands the KV indices to the sender). The prefill sends ``len(prompt) - decode_prefix_len``
tokens (``_num_pages_to_send``): a prefill radix hit does not shrink the transfer, only a decode radix match does.

Here each side posts a notice when its part is done: ``PrefillDone`` (the prefill's engine finished the prefill,
first token sampled) and ``DecodeReady`` (the decode's engine pre-allocated the KV). ``transfer`` gives the time the
whole KV is at the decode worker: the chunks before the last stream while the prefill computes, from when both the
prefill has started and the decode side has pre-allocated, so only the last chunk's bytes are a tail after the
prefill's end, unless the bytes take longer than the prefill itself. ``TransferFabric`` pairs the two notices of a
room, whichever comes first. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_ROOM = (1 << 63) - 1  # SMG's rooms: a random u64 masked to [0, 2**63 - 1]


@dataclass(frozen=True, slots=True)
class PrefillDone:
    """A prefill worker's engine finished the request's prefill (its first token sampled)."""

    room: int
    worker: str
    arrival: float
    start: float
    end: float
    prompt_tokens: int
    cached_tokens: int  # the prefill's radix hit
    last_chunk_tokens: int  # prompt tokens computed in its last prefill forward
    kv_bytes_per_token: int  # the sender's parameters
    bandwidth: float
    # HiCache (0 when off): where ``cached_tokens`` came from and what it cost (``IterationTiming``'s fields), which
    # the decode side relays in its answer as SGLang relays them in the transfer's metadata (``decode.py``)
    cached_device: int = 0
    cached_host: int = 0
    cached_storage: int = 0
    load_back_seconds: float = 0.0
    prefetch_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class DecodeReady:
    """A decode worker pre-allocated KV for the request (prompt + reserved tokens admitted)."""

    room: int
    worker: str
    at: float
    prompt_tokens: int
    decode_prefix_tokens: int  # its own radix match (0 when its radix cache is off)
    bootstrap_host: str | None
    bootstrap_port: int | None


@dataclass(frozen=True, slots=True)
class Transfer:
    """Both sides of a room known: the KV is at the decode worker at ``ready``."""

    room: int
    ready: float
    tokens: int
    bytes: int
    prefill: PrefillDone
    decode: DecodeReady


Notice = PrefillDone | DecodeReady


def transfer(p: PrefillDone, d: DecodeReady) -> Transfer:
    """The transfer of room ``p.room`` (== ``d.room``): what the decode side lacks, sent at the sender's bandwidth."""
    if p.room != d.room:
        raise ValueError(f"a transfer pairs one room, got {p.room} and {d.room}")
    tokens = max(p.prompt_tokens - d.decode_prefix_tokens, 0)
    nbytes = tokens * p.kv_bytes_per_token
    last = min(p.last_chunk_tokens, tokens)
    bw = p.bandwidth
    ready = max(p.end + last * p.kv_bytes_per_token / bw, max(d.at, p.start) + nbytes / bw)
    return Transfer(room=p.room, ready=ready, tokens=tokens, bytes=nbytes, prefill=p, decode=d)


class TransferFabric:
    """Pairs the two sides of a room, whatever order they come in; forgets a room once paired."""

    def __init__(self) -> None:
        self._prefill: dict[int, PrefillDone] = {}
        self._decode: dict[int, DecodeReady] = {}

    def post(self, notice: Notice) -> Transfer | None:
        """Record one side of a room; the transfer when the other side is already known."""
        if isinstance(notice, PrefillDone):
            d = self._decode.pop(notice.room, None)
            if d is None:
                self._put(self._prefill, notice)
                return None
            return transfer(notice, d)
        p = self._prefill.pop(notice.room, None)
        if p is None:
            self._put(self._decode, notice)
            return None
        return transfer(p, notice)

    @staticmethod
    def _put(side: dict[int, Any], notice: Notice) -> None:
        if notice.room in side:
            raise ValueError(f"room {notice.room} already has a {type(notice).__name__}")
        side[notice.room] = notice

    @property
    def unpaired(self) -> int:
        """Rooms with one side known."""
        return len(self._prefill) + len(self._decode)


# ---- wire forms (JSON) ----------------------------------------------------------------------------------------------

_KINDS: dict[str, type[PrefillDone] | type[DecodeReady]] = {"prefill_done": PrefillDone, "decode_ready": DecodeReady}
_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {  # (field, kind of value)
    PrefillDone: (("room", "room"), ("worker", "str"), ("arrival", "time"), ("start", "time"), ("end", "time"),
                  ("prompt_tokens", "count"), ("cached_tokens", "count"), ("last_chunk_tokens", "count"),
                  ("kv_bytes_per_token", "positive"), ("bandwidth", "rate"), ("cached_device", "count"),
                  ("cached_host", "count"), ("cached_storage", "count"), ("load_back_seconds", "time"),
                  ("prefetch_seconds", "time")),
    DecodeReady: (("room", "room"), ("worker", "str"), ("at", "time"), ("prompt_tokens", "count"),
                  ("decode_prefix_tokens", "count"), ("bootstrap_host", "str?"), ("bootstrap_port", "port?")),
}


def notice_to_json(n: Notice) -> dict[str, Any]:
    """``{"kind": "prefill_done" | "decode_ready", <the fields>}``."""
    kind = "prefill_done" if isinstance(n, PrefillDone) else "decode_ready"
    return {"kind": kind, **{name: getattr(n, name) for name, _ in _FIELDS[type(n)]}}


def notice_from_json(d: Any) -> Notice:
    """The notice of ``notice_to_json``'s form; ValueError on anything else."""
    if not isinstance(d, dict):
        raise ValueError("a notice must be a JSON object")
    cls = _KINDS.get(d.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"notice kind must be one of {sorted(_KINDS)}, got {d.get('kind')!r}")
    return cls(**{name: _value(d, name, kind) for name, kind in _FIELDS[cls]})


def transfer_to_json(t: Transfer) -> dict[str, Any]:
    """``{"room", "ready", "tokens", "bytes", "prefill": <notice>, "decode": <notice>}``."""
    return {"room": t.room, "ready": t.ready, "tokens": t.tokens, "bytes": t.bytes,
            "prefill": notice_to_json(t.prefill), "decode": notice_to_json(t.decode)}


def transfer_from_json(d: Any) -> Transfer:
    """The transfer of ``transfer_to_json``'s form; ValueError on anything else (sides of different rooms too)."""
    if not isinstance(d, dict):
        raise ValueError("a transfer must be a JSON object")
    p, q = notice_from_json(d.get("prefill")), notice_from_json(d.get("decode"))
    if not isinstance(p, PrefillDone) or not isinstance(q, DecodeReady):
        raise ValueError("a transfer's prefill must be a prefill_done notice and its decode a decode_ready notice")
    room = _value(d, "room", "room")
    if not p.room == q.room == room:
        raise ValueError("a transfer's room and its two notices' rooms must be equal")
    return Transfer(room=room, ready=_value(d, "ready", "time"), tokens=_value(d, "tokens", "count"),
                    bytes=_value(d, "bytes", "count"), prefill=p, decode=q)


def _value(d: dict[str, Any], name: str, kind: str) -> Any:
    v = d.get(name)
    if kind.endswith("?"):
        if v is None:
            return None
        kind = kind[:-1]
    is_int = type(v) is int
    ok = {
        "room": is_int and 0 <= v <= MAX_ROOM,
        "str": type(v) is str,
        "count": is_int and v >= 0,
        "positive": is_int and v >= 1,
        "port": is_int and 0 < v < 65536,
        "time": type(v) in (int, float) and math.isfinite(v),
        "rate": type(v) in (int, float) and math.isfinite(v) and v > 0,
    }[kind]
    if not ok:
        raise ValueError(f"{name}: invalid value {v!r}")
    return float(v) if kind in ("time", "rate") else v
