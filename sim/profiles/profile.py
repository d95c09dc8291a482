"""A hardware and model profile: one model on one GPU type at one TP size under one engine version, as data.

A profile holds ``LatencyModel``'s six coefficients (same names, seconds), the per-request overhead, the scheduler's
chunked-prefill size and prefill token budget, the KV bytes per token and KV capacity (given, or derived from the
model's shape and the GPU's memory by ``sim.profiles.capacity``), MoE expert counts, and where the numbers come
from. TOML layout (``docs/profiles.md``): top-level identity keys, then ``[latency]``, ``[scheduler]``, ``[kv]``,
``[shape]`` (the model's attention layout and weight count), ``[moe]`` and ``[provenance]``. Loading refuses unknown
keys, missing keys and wrong types, naming the file and the key. The engine that runs today (``sim.engine.Engine``)
uses the latency coefficients and the KV capacity; the overhead, chunking and MoE terms are carried for the
iteration-level engine.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from sim.engine.types import LatencyModel, SchedulerConfig
from sim.profiles.capacity import CapacityError, ModelShape, kv_bytes_per_token, kv_capacity_tokens, weight_bytes

# the six coefficients of a profile's [latency] table (LatencyModel's other fields come from [moe])
LATENCY_KEYS = ("prefill_floor", "prefill_per_token", "attention_per_token2", "decode_floor", "decode_per_seq",
                "decode_per_ctx_token")
BASIS_TAGS = ("V", "D", "I")  # verified in a source, derived by arithmetic, inferred (shared/specs/latency-profiles.md)
NO_CHUNKING = -1  # ``chunked_prefill_size = -1`` disables chunking, as SGLang's flag does


class ProfileError(ValueError):
    """A profile file or name that cannot be used."""


@dataclass(frozen=True)
class Provenance:
    """Where a profile's numbers come from; ``basis`` is the spec's tag: V, D, I or a mix like ``D/I``."""

    source: str
    date: str
    derivation: str
    basis: str
    residuals: dict[str, float] = field(default_factory=dict)  # relative fit residuals, when fitted


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    gpu: str
    tp: int
    engine: str  # engine@version, e.g. sglang@0.5
    dtype: str  # weights
    kv_bytes_per_token: int  # per TP rank
    kv_capacity_tokens: int
    provenance: Provenance
    kv_dtype: str = "bf16"
    gpu_memory_gib: float | None = None
    mem_fraction_static: float = 0.9
    # LatencyModel's coefficients, seconds
    prefill_floor: float = LatencyModel.prefill_floor
    prefill_per_token: float = LatencyModel.prefill_per_token
    attention_per_token2: float = LatencyModel.attention_per_token2
    decode_floor: float = LatencyModel.decode_floor
    decode_per_seq: float = LatencyModel.decode_per_seq
    decode_per_ctx_token: float = LatencyModel.decode_per_ctx_token
    request_overhead: float = 0.0  # seconds per request: scheduling, tokenisation, detokenisation
    chunked_prefill_size: int | None = SchedulerConfig.chunked_prefill_size
    max_prefill_tokens: int = SchedulerConfig.max_prefill_tokens
    shape: ModelShape | None = None
    experts: int = 0  # MoE routed experts (0: dense)
    experts_per_token: int = 0  # MoE top-k
    decode_floor_all_experts: float = 0.0  # MoE: a decode step's weight read once every expert is read (0: none)

    @property
    def basis(self) -> str:
        return f"[{self.provenance.basis}]"

    def latency_model(self) -> LatencyModel:
        moe = {"moe_experts": self.experts, "moe_experts_per_token": self.experts_per_token,
               "decode_floor_all_experts": self.decode_floor_all_experts} if self.decode_floor_all_experts else {}
        return LatencyModel(**{k: getattr(self, k) for k in LATENCY_KEYS}, **moe)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(chunked_prefill_size=self.chunked_prefill_size,
                               max_prefill_tokens=self.max_prefill_tokens)

    def to_toml(self) -> str:
        """The TOML text ``profile_from_toml`` reads back to an equal profile; KV numbers the ``[shape]`` table
        derives are left out, so a file shows how its capacity is obtained."""
        top = {"name": self.name, "model": self.model, "gpu": self.gpu, "gpu_memory_gib": self.gpu_memory_gib,
               "tp": self.tp, "engine": self.engine, "dtype": self.dtype, "kv_dtype": self.kv_dtype}
        tables: dict[str, dict[str, Any]] = {
            "latency": {k: getattr(self, k) for k in (*LATENCY_KEYS, "request_overhead")},
            "scheduler": {"chunked_prefill_size": NO_CHUNKING if self.chunked_prefill_size is None
                          else self.chunked_prefill_size, "max_prefill_tokens": self.max_prefill_tokens},
            "kv": {"mem_fraction_static": self.mem_fraction_static},
        }
        bytes_derived = self.shape is not None and kv_bytes_per_token(self.shape, self.tp, self.kv_dtype) \
            == self.kv_bytes_per_token
        if not bytes_derived:
            tables["kv"]["bytes_per_token"] = self.kv_bytes_per_token
        capacity_derived = bytes_derived and self.gpu_memory_gib is not None \
            and _derived_capacity(self) == self.kv_capacity_tokens
        if not capacity_derived:
            tables["kv"]["capacity_tokens"] = self.kv_capacity_tokens
        if self.shape is not None:
            tables["shape"] = {f.name: getattr(self.shape, f.name) for f in fields(ModelShape)
                               if getattr(self.shape, f.name) != f.default or f.name == "attention"}
        if self.experts:
            tables["moe"] = {"experts": self.experts, "experts_per_token": self.experts_per_token}
            if self.decode_floor_all_experts:
                tables["moe"]["decode_floor_all_experts"] = self.decode_floor_all_experts
        p = self.provenance
        tables["provenance"] = {"source": p.source, "date": p.date, "derivation": p.derivation, "basis": p.basis}
        lines = [f"{k} = {_toml_value(v)}" for k, v in top.items() if v is not None]
        for table, values in tables.items():
            lines += ["", f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
        if p.residuals:
            lines += ["", "[provenance.residuals]", *(f"{k} = {_toml_value(v)}" for k, v in p.residuals.items())]
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _derived_capacity(p: Profile) -> int:
    assert p.shape is not None and p.gpu_memory_gib is not None
    return kv_capacity_tokens(p.kv_bytes_per_token, p.gpu_memory_gib, weight_bytes(p.shape, p.dtype), p.tp,
                              p.mem_fraction_static)


# --- loading ------------------------------------------------------------------------------------------------------

# table ("" for the top level) -> key -> (type, required)
SCHEMA: dict[str, dict[str, tuple[type, bool]]] = {
    "": {"name": (str, True), "model": (str, True), "gpu": (str, True), "gpu_memory_gib": (float, False),
         "tp": (int, True), "engine": (str, True), "dtype": (str, True), "kv_dtype": (str, False)},
    "latency": {**{k: (float, True) for k in LATENCY_KEYS}, "request_overhead": (float, True)},
    "scheduler": {"chunked_prefill_size": (int, False), "max_prefill_tokens": (int, False)},
    "kv": {"mem_fraction_static": (float, False), "bytes_per_token": (int, False), "capacity_tokens": (int, False)},
    "shape": {"layers": (int, True), "attention": (str, True), "kv_heads": (int, False), "head_dim": (int, False),
              "kv_lora_rank": (int, False), "qk_rope_head_dim": (int, False), "params_billions": (float, True)},
    "moe": {"experts": (int, True), "experts_per_token": (int, True), "decode_floor_all_experts": (float, False)},
    "provenance": {"source": (str, True), "date": (str, True), "derivation": (str, True), "basis": (str, True),
                   "residuals": (dict, False)},
}
REQUIRED_TABLES = ("latency", "provenance")


def _closest(word: str, choices: list[str]) -> str:
    match = get_close_matches(word, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _checked(origin: str, table: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data``'s keys checked against ``SCHEMA[table]``: unknown, missing and mistyped keys are ProfileErrors."""
    schema = SCHEMA[table]
    prefix = f"{table}." if table else ""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if table == "" and isinstance(v, Mapping):
            continue
        if k not in schema:
            raise ProfileError(f"{origin}: {prefix}{k}: unknown key{_closest(k, list(schema))} "
                               f"({table or 'the top level'} takes: {', '.join(schema)})")
        kind = schema[k][0]
        ok = (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) if kind is float
              else isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
        if not ok:
            raise ProfileError(f"{origin}: {prefix}{k} must be {_type_name(kind)}, got {v!r}")
        out[k] = float(v) if kind is float else v
    missing = [k for k, (_, required) in schema.items() if required and k not in data]
    if missing:
        raise ProfileError(f"{origin}: missing {', '.join(prefix + k for k in missing)}")
    return out


def _type_name(kind: type) -> str:
    return {float: "a number", int: "an integer", str: "a string", dict: "a table"}[kind]


def profile_from_dict(data: Mapping[str, Any], origin: str = "profile") -> Profile:
    """A profile from its TOML layout; ``origin`` (a file name) starts every error message."""
    for k, v in data.items():
        if isinstance(v, Mapping) and k not in SCHEMA:
            raise ProfileError(f"{origin}: unknown table [{k}]{_closest(k, [t for t in SCHEMA if t])} "
                               f"(tables: {', '.join(t for t in SCHEMA if t)})")
    top = _checked(origin, "", data)
    for t in REQUIRED_TABLES:
        if t not in data:
            raise ProfileError(f"{origin}: missing table [{t}]")
    tables = {t: _checked(origin, t, data[t]) if t in data else {} for t in SCHEMA if t}
    prov = tables["provenance"]
    residuals = prov.pop("residuals", {})
    for k, v in residuals.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProfileError(f"{origin}: provenance.residuals.{k} must be a number, got {v!r}")
    if not prov["basis"] or any(tag not in BASIS_TAGS for tag in prov["basis"].split("/")):
        raise ProfileError(f"{origin}: provenance.basis must be V, D, I or a mix like D/I, got {prov['basis']!r}")
    provenance = Provenance(**prov, residuals={k: float(v) for k, v in residuals.items()})
    kv, sched, moe = tables["kv"], tables["scheduler"], tables["moe"]
    tp = top["tp"]
    if tp < 1:
        raise ProfileError(f"{origin}: tp must be >= 1, got {tp}")
    try:
        shape = ModelShape(**tables["shape"]) if tables["shape"] else None
        kv_dtype = top.get("kv_dtype", "bf16")
        if "bytes_per_token" in kv:
            bytes_per_token = kv["bytes_per_token"]
        elif shape is not None:
            bytes_per_token = kv_bytes_per_token(shape, tp, kv_dtype)
        else:
            raise ProfileError(f"{origin}: missing kv.bytes_per_token (or a [shape] table to derive it from)")
        fraction = kv.get("mem_fraction_static", 0.9)
        if "capacity_tokens" in kv:
            capacity = kv["capacity_tokens"]
        elif shape is not None and "gpu_memory_gib" in top:
            capacity = kv_capacity_tokens(bytes_per_token, top["gpu_memory_gib"], weight_bytes(shape, top["dtype"]),
                                          tp, fraction)
        else:
            raise ProfileError(f"{origin}: missing kv.capacity_tokens (or gpu_memory_gib and a [shape] table to "
                               f"derive it from)")
    except CapacityError as e:
        raise ProfileError(f"{origin}: {e}") from e
    for k in ("bytes_per_token", "capacity_tokens"):
        if k in kv and kv[k] < 1:
            raise ProfileError(f"{origin}: kv.{k} must be >= 1, got {kv[k]}")
    if moe and moe.get("decode_floor_all_experts", 0.0) < 0:
        raise ProfileError(f"{origin}: moe.decode_floor_all_experts must be >= 0, "
                           f"got {moe['decode_floor_all_experts']}")
    if moe and not 1 <= moe["experts_per_token"] <= moe["experts"]:
        raise ProfileError(f"{origin}: moe.experts_per_token must be within [1, moe.experts = {moe['experts']}], "
                           f"got {moe['experts_per_token']}")
    chunk = sched.get("chunked_prefill_size", SchedulerConfig.chunked_prefill_size)
    latency = tables["latency"]
    negative = [k for k, v in latency.items() if v < 0]
    if negative:
        raise ProfileError(f"{origin}: latency.{negative[0]} must be >= 0, got {latency[negative[0]]}")
    return Profile(
        name=top["name"], model=top["model"], gpu=top["gpu"], tp=tp, engine=top["engine"], dtype=top["dtype"],
        kv_dtype=kv_dtype, gpu_memory_gib=top.get("gpu_memory_gib"), mem_fraction_static=fraction,
        kv_bytes_per_token=bytes_per_token, kv_capacity_tokens=capacity, provenance=provenance, **latency,
        chunked_prefill_size=None if chunk == NO_CHUNKING else chunk,
        max_prefill_tokens=sched.get("max_prefill_tokens", SchedulerConfig.max_prefill_tokens), shape=shape,
        experts=moe.get("experts", 0), experts_per_token=moe.get("experts_per_token", 0),
        decode_floor_all_experts=moe.get("decode_floor_all_experts", 0.0))


def profile_from_toml(text: str, origin: str = "profile") -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{origin}: {e}") from e
    return profile_from_dict(data, origin)


def read_profile(path: str | Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}")
    return profile_from_toml(path.read_text(), str(path))
