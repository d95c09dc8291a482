"""Scenarios: a worker pool and a population of agent sessions, as TOML, with the distributions of their turns.

The format (every table, key, distribution kind and arrival pattern, with a complete example) is documented in
``docs/scenarios.md``; built-ins live in ``sim/scenarios/*.toml``. The loader refuses what it would otherwise
ignore or misread: unknown tables and keys, parameters a distribution kind does not take, keys of another arrival
pattern, values out of range, and scenarios whose sessions could never reach a second turn. Every error names the
key's full path (``turns.count``, ``workers.slowdown``) and never starts with ``[``, so a console that reads rich
markup prints it whole.

What the distributions draw, up front and seeded, is in ``sim.workload.plans``; the texts, in ``sim.workload.texts``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sim.engine.types import PREFETCH_POLICIES, WRITE_POLICIES
from sim.faults import FaultError, FaultSpec, parse_faults
from sim.profiles.catalog import load_profile
from sim.profiles.profile import ProfileError
from sim.workload.framing import TURN_FRAMING, first_prompt_tokens

TOP_KEYS = ("name", "description", "seed")
# TOML table -> its keys -> the Scenario field each sets
TABLES: dict[str, dict[str, str]] = {
    "workers": {"count": "workers", "profile": "profile", "kv_capacity_tokens": "kv_capacity_tokens",
                "max_running_requests": "max_running_requests", "slowdown": "slowdown", "engine": "engine"},
    "sessions": {"count": "sessions", "group_size": "group_size", "system_prompt_tokens": "system_prompt_tokens",
                 "task_prompt_tokens": "task_prompt_tokens", "max_context_tokens": "max_context_tokens",
                 "retry_rate": "retry_rate"},
    "arrivals": {"pattern": "arrival", "rate": "rate", "concurrency": "concurrency"},
    "turns": {"count": "turns", "output_tokens": "output_tokens", "tool_output_tokens": "tool_output_tokens",
              "tool_latency": "tool_latency", "think_time": "think_time"},
}
ARRAY_TABLES = ("faults",)  # [[faults]]: see sim.faults
# PD disaggregation (shared/specs/pd-hicache.md sections 1-2): [workers.prefill] and [workers.decode] are pools of
# their own; a scenario is PD when both have a count >= 1. Each sub-table key -> the Scenario field suffix
# (``prefill_workers``, ``decode_kv_capacity_tokens``, ...); a pool without a capacity or a profile takes its
# profile's capacity, else [workers]' capacity and profile
POOL_ROLES = ("prefill", "decode")
POOL_KEYS: dict[str, str] = {"count": "workers", "kv_capacity_tokens": "kv_capacity_tokens", "profile": "profile"}
# [workers] keys that only a PD pool reads -> the Scenario field each sets (SGLang's and the transfer's parameters)
PD_KEYS: dict[str, str] = {"decode_radix_cache": "decode_radix_cache",
                           "num_reserved_decode_tokens": "num_reserved_decode_tokens",
                           "transfer_bandwidth_gb_s": "transfer_bandwidth_gb_s",
                           "kv_bytes_per_token": "kv_bytes_per_token"}
PD_FIELDS = (*(f"{role}_{suffix}" for role in POOL_ROLES for suffix in POOL_KEYS.values()), *PD_KEYS.values())
# HiCache (shared/specs/pd-hicache.md section 3): the [workers] keys of SGLang's flags, plus the testbed's bandwidths
# (GB/s) and the shared L3's capacity (tokens; None: unbounded); each key names the Scenario field it sets. Apart
# from enable_hierarchical_cache itself they apply only with it on; the storage keys only with a storage backend
HICACHE_FIELDS = ("enable_hierarchical_cache", "hicache_ratio", "hicache_size", "hicache_write_policy",
                  "hicache_storage_backend", "hicache_storage_prefetch_policy", "hicache_pcie_bandwidth_gb_s",
                  "hicache_storage_read_bandwidth_gb_s", "hicache_storage_write_bandwidth_gb_s",
                  "hicache_storage_capacity_tokens", "disaggregation_decode_enable_offload_kvcache")
STORAGE_FIELDS = ("hicache_storage_prefetch_policy", "hicache_storage_read_bandwidth_gb_s",
                  "hicache_storage_write_bandwidth_gb_s", "hicache_storage_capacity_tokens",
                  "disaggregation_decode_enable_offload_kvcache")
HICACHE_WRITE_POLICIES = WRITE_POLICIES  # --hicache-write-policy
HICACHE_PREFETCH_POLICIES = PREFETCH_POLICIES  # --hicache-storage-prefetch-policy
# [workers] keys besides TABLES' (a PD pool's, HiCache's, and the KV page size: SGLang's --page-size)
WORKER_KEYS: dict[str, str] = {**PD_KEYS, "page_size": "page_size", **{k: k for k in HICACHE_FIELDS}}
BOOL_FIELDS = ("decode_radix_cache", "enable_hierarchical_cache", "disaggregation_decode_enable_offload_kvcache")
# arrival pattern -> the [arrivals] keys it reads (besides pattern)
ARRIVAL_KEYS: dict[str, tuple[str, ...]] = {"rollout": (), "poisson": ("rate",), "concurrency": ("concurrency",)}
ARRIVAL_PATTERNS = tuple(ARRIVAL_KEYS)
# distribution kind -> its parameters; every kind also takes the bounds
DIST_PARAMS: dict[str, tuple[str, ...]] = {"constant": ("value",), "uniform": ("low", "high"),
                                           "lognormal": ("median", "sigma"), "exponential": ("mean",),
                                           "normal": ("mean", "std"), "choice": ("values", "weights")}
DIST_OPTIONAL = ("weights",)
DIST_BOUNDS = ("min", "max")
DIST_KINDS = tuple(DIST_PARAMS)
DIST_FIELDS = ("turns", "output_tokens", "tool_output_tokens", "tool_latency", "think_time")
INT_FIELDS = ("seed", "workers", "max_running_requests", "sessions", "group_size", "system_prompt_tokens",
              "task_prompt_tokens", "max_context_tokens", "concurrency", "prefill_workers", "decode_workers",
              "num_reserved_decode_tokens", "page_size")
FLOAT_FIELDS = ("retry_rate", "rate", "transfer_bandwidth_gb_s", "hicache_ratio", "hicache_size",
                "hicache_pcie_bandwidth_gb_s", "hicache_storage_read_bandwidth_gb_s",
                "hicache_storage_write_bandwidth_gb_s")
STR_FIELDS = ("name", "description", "arrival", "profile", "engine", "prefill_profile", "decode_profile",
              "hicache_write_policy", "hicache_storage_backend", "hicache_storage_prefetch_policy")
CAPACITY_FIELDS = ("kv_capacity_tokens", "prefill_kv_capacity_tokens", "decode_kv_capacity_tokens",
                   "hicache_storage_capacity_tokens")
# workers.engine: how a worker schedules (sim.engine): SGLang's iteration-level scheduler, or the arrival-time
# closed form (faster, no contention between requests after admission: the model of results_version <= 2)
ENGINES = ("iteration", "arrival")


class ScenarioError(ValueError):
    """A scenario file or override that cannot be used."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else ``""``."""
    match = get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _number(v: Any, what: str) -> float:
    """A finite number (TOML's nan and inf are refused, as are booleans and strings)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ScenarioError(f"{what} must be a finite number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Dist:
    """A one-dimensional distribution, clipped to ``[min, max]``; ``DIST_PARAMS`` says which parameters each
    kind takes (``choice``'s ``weights`` are optional, the others required)."""

    kind: str = "constant"
    value: float = 0.0
    low: float = 0.0
    high: float = 1.0
    median: float = 1.0
    sigma: float = 0.0
    mean: float = 1.0
    std: float = 0.0
    values: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    min: float | None = None
    max: float | None = None

    @classmethod
    def parse(cls, spec: Any, what: str = "distribution") -> Dist:
        """A bare number (a constant) or a table ``{dist = kind, <the kind's parameters>, min?, max?}``."""
        if isinstance(spec, Dist):
            return spec
        if not isinstance(spec, Mapping):
            return cls(kind="constant", value=_number(spec, what))
        spec = dict(spec)
        kind = spec.pop("dist", None)
        if kind is None:
            raise ScenarioError(f"{what}: a distribution table needs dist = one of {', '.join(DIST_KINDS)} "
                                f"(a constant is a bare number)")
        if kind not in DIST_KINDS:
            raise ScenarioError(f"{what}: unknown dist {kind!r}{did_you_mean(str(kind), DIST_KINDS)} "
                                f"(one of {', '.join(DIST_KINDS)})")
        params = DIST_PARAMS[kind]
        takes = f"{kind} takes {', '.join(params)} (and optionally {', '.join(DIST_BOUNDS)})"
        unknown = [k for k in spec if k not in params + DIST_BOUNDS]
        if unknown:
            raise ScenarioError(f"{what}: {takes}, not {', '.join(unknown)}")
        missing = [k for k in params if k not in spec and k not in DIST_OPTIONAL]
        if missing:
            raise ScenarioError(f"{what}: {takes}; {', '.join(missing)} missing")
        kwargs: dict[str, Any] = {"kind": kind}
        for k, v in spec.items():
            if k in ("values", "weights"):
                if not isinstance(v, list):
                    raise ScenarioError(f"{what}.{k} must be a list of numbers, got {v!r}")
                kwargs[k] = tuple(_number(x, f"{what}.{k}") for x in v)
            else:
                kwargs[k] = _number(v, f"{what}.{k}")
        d = cls(**kwargs)
        d.validate(what)
        return d

    def validate(self, what: str = "distribution") -> None:
        if self.kind == "lognormal" and (self.median <= 0 or self.sigma < 0):
            raise ScenarioError(f"{what}: lognormal needs median > 0 and sigma >= 0")
        if self.kind == "uniform" and self.high < self.low:
            raise ScenarioError(f"{what}: uniform needs high >= low")
        if self.kind == "exponential" and self.mean <= 0:
            raise ScenarioError(f"{what}: exponential needs mean > 0")
        if self.kind == "normal" and self.std < 0:
            raise ScenarioError(f"{what}: normal needs std >= 0")
        if self.kind == "choice":
            if not self.values:
                raise ScenarioError(f"{what}: choice needs values")
            if self.weights and (len(self.weights) != len(self.values) or min(self.weights) < 0
                                 or sum(self.weights) <= 0):
                raise ScenarioError(f"{what}: weights must match values and be non-negative")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ScenarioError(f"{what}: max < min")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "constant":
            x = np.full(size, self.value, dtype=float)
        elif self.kind == "uniform":
            x = rng.uniform(self.low, self.high, size)
        elif self.kind == "lognormal":
            x = rng.lognormal(math.log(self.median), self.sigma, size)
        elif self.kind == "exponential":
            x = rng.exponential(self.mean, size)
        elif self.kind == "normal":
            x = rng.normal(self.mean, self.std, size)
        else:
            p = None
            if self.weights:
                w = np.asarray(self.weights, dtype=float)
                p = w / w.sum()
            x = rng.choice(np.asarray(self.values, dtype=float), size=size, p=p)
        lo = -np.inf if self.min is None else self.min
        hi = np.inf if self.max is None else self.max
        return np.clip(x, lo, hi)

    def sample_int(self, rng: np.random.Generator, size: int, floor: int = 0) -> np.ndarray:
        return np.maximum(np.rint(self.sample(rng, size)), floor).astype(np.int64)

    def support(self) -> tuple[float, float]:
        """The smallest and the largest value a draw can take (bounds included; open ends as +-inf or 0)."""
        if self.kind == "constant":
            lo, hi = self.value, self.value
        elif self.kind == "uniform":
            lo, hi = self.low, self.high
        elif self.kind == "lognormal":
            lo, hi = (0.0, math.inf) if self.sigma > 0 else (self.median, self.median)
        elif self.kind == "exponential":
            lo, hi = 0.0, math.inf
        elif self.kind == "normal":
            lo, hi = (-math.inf, math.inf) if self.std > 0 else (self.mean, self.mean)
        else:
            drawn = [v for i, v in enumerate(self.values) if not self.weights or self.weights[i] > 0]
            lo, hi = min(drawn), max(drawn)

        def clip(x: float) -> float:
            x = x if self.min is None else max(x, self.min)
            return x if self.max is None else min(x, self.max)

        return clip(lo), clip(hi)

    def int_support(self, floor: int = 0) -> tuple[float, float]:
        """``support()`` as ``sample_int(..., floor)`` rounds it (the upper end may stay infinite)."""
        lo, hi = self.support()
        return (max(float(np.rint(lo)), floor) if math.isfinite(lo) else floor,
                max(float(np.rint(hi)), floor) if math.isfinite(hi) else math.inf)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.kind}
        for p in DIST_PARAMS[self.kind]:
            v = getattr(self, p)
            if p in DIST_OPTIONAL and not v:
                continue
            out[p] = list(v) if isinstance(v, tuple) else v
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


@dataclass(frozen=True)
class Scenario:
    """A worker pool plus a population of agent sessions; all knobs of one simulated experiment."""

    name: str = "custom"
    description: str = ""
    seed: int = 0
    # workers
    workers: int = 8
    profile: str = ""  # a shipped profile's name or a profile TOML path (sim.profiles); "": LatencyModel's defaults
    kv_capacity_tokens: int | None = 400_000
    max_running_requests: int = 256
    slowdown: tuple[float, ...] = ()
    engine: str = "iteration"
    # sessions
    sessions: int = 64
    group_size: int = 8
    system_prompt_tokens: int = 2000
    task_prompt_tokens: int = 400
    max_context_tokens: int = 30_000
    retry_rate: float = 0.0
    # arrivals
    arrival: str = "rollout"
    rate: float = 1.0
    concurrency: int = 16
    # turn distributions
    turns: Dist = field(default_factory=lambda: Dist("lognormal", median=15, sigma=0.5, min=2, max=60))
    output_tokens: Dist = field(default_factory=lambda: Dist("lognormal", median=250, sigma=0.7, min=8))
    tool_output_tokens: Dist = field(default_factory=lambda: Dist("lognormal", median=500, sigma=1.0, min=8))
    tool_latency: Dist = field(default_factory=lambda: Dist("lognormal", median=2.0, sigma=1.0))
    think_time: Dist = field(default_factory=lambda: Dist("constant", value=0.0))
    # faults (sim.faults): dead / slow workers, upstream 5xx and "rollback failed" rates, in virtual time
    faults: tuple[FaultSpec, ...] = ()
    # PD disaggregation (PD_FIELDS; left out of ``to_dict`` unless ``pd``): the prefill and the decode pool, each
    # with its count, KV capacity and profile ("": ``profile``); ``workers`` is then their sum, prefill first
    prefill_workers: int = 0
    prefill_kv_capacity_tokens: int | None = 400_000
    prefill_profile: str = ""
    decode_workers: int = 0
    decode_kv_capacity_tokens: int | None = 400_000
    decode_profile: str = ""
    decode_radix_cache: bool = False  # SGLang's --disaggregation-decode-enable-radix-cache
    num_reserved_decode_tokens: int = 512  # SGLang's --num-reserved-decode-tokens
    transfer_bandwidth_gb_s: float = 50.0  # the KV transfer's bandwidth (RDMA), 1e9 bytes/s
    kv_bytes_per_token: int | None = None  # KV bytes per token per GPU; None: each worker's profile's, else 128 KiB
    # the KV page size in tokens (SGLang's --page-size): the radix trees match and store whole pages (1: left out of
    # ``to_dict``, so scenarios without it keep their results files and scenario hash)
    page_size: int = 1
    # HiCache (HICACHE_FIELDS; left out of ``to_dict`` unless on): SGLang's flags; a PD pool's prefill workers run it,
    # its decode workers only to offload their KV to L3 (disaggregation_decode_enable_offload_kvcache)
    enable_hierarchical_cache: bool = False  # --enable-hierarchical-cache: the host pool (L2) per worker
    hicache_ratio: float = 2.0  # --hicache-ratio: host pool tokens / GPU pool tokens
    hicache_size: float = 0.0  # --hicache-size: host pool GB per worker, over the ratio when > 0
    hicache_write_policy: str = "write_through"  # --hicache-write-policy
    hicache_storage_backend: str = ""  # --hicache-storage-backend: any name is the pool's shared L3; "": no L3
    hicache_storage_prefetch_policy: str = "timeout"  # --hicache-storage-prefetch-policy
    hicache_pcie_bandwidth_gb_s: float = 50.0  # host <-> GPU load-back (PCIe Gen5 x16, ~45-55 GB/s effective)
    hicache_storage_read_bandwidth_gb_s: float = 40.0  # L3 -> host per worker (RDMA ~40 GB/s; a slow L3 0.57)
    hicache_storage_write_bandwidth_gb_s: float = 40.0  # host -> L3 per worker
    hicache_storage_capacity_tokens: int | None = None  # the L3's capacity (None: unbounded)
    disaggregation_decode_enable_offload_kvcache: bool = False  # --disaggregation-decode-enable-offload-kvcache

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "faults", parse_faults(self.faults, self.workers))
        except FaultError as e:
            raise ScenarioError(str(e)) from e
        self._check_pd()
        self._check_hicache()
        for k in DIST_FIELDS:
            object.__setattr__(self, k, Dist.parse(getattr(self, k), k))
        if self.workers < 1:
            raise ScenarioError("workers.count must be >= 1")
        if self.profile:
            try:
                load_profile(self.profile)
            except ProfileError as e:
                raise ScenarioError(f"workers.profile: {e}") from e
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < 1:
            raise ScenarioError("workers.kv_capacity_tokens must be positive (or 0/'inf' for unbounded)")
        if self.max_running_requests < 1:
            raise ScenarioError("workers.max_running_requests must be >= 1")
        if self.engine not in ENGINES:
            raise ScenarioError(f"workers.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}"
                                f"{did_you_mean(self.engine, ENGINES)}")
        if any(s <= 0 for s in self.slowdown):
            raise ScenarioError("workers.slowdown entries must be > 0")
        if len(self.slowdown) > self.workers:
            raise ScenarioError(f"workers.slowdown has {len(self.slowdown)} entries for {self.workers} workers "
                                f"(entry i is worker i's multiplier)")
        if self.sessions < 1 or self.group_size < 1:
            raise ScenarioError("sessions.count and sessions.group_size must be >= 1")
        if self.arrival not in ARRIVAL_PATTERNS:
            raise ScenarioError(f"arrivals.pattern must be one of {', '.join(ARRIVAL_PATTERNS)}, got "
                                f"{self.arrival!r}{did_you_mean(self.arrival, ARRIVAL_PATTERNS)}")
        if self.arrival == "poisson" and self.rate <= 0:
            raise ScenarioError("arrivals.rate must be > 0")
        if self.arrival == "concurrency" and self.concurrency < 1:
            raise ScenarioError("arrivals.concurrency must be >= 1")
        if not 0.0 <= self.retry_rate <= 1.0:
            raise ScenarioError("sessions.retry_rate must be within [0, 1]")
        for k in ("system_prompt_tokens", "task_prompt_tokens"):
            if getattr(self, k) < 0:
                raise ScenarioError(f"sessions.{k} must be >= 0")
        if self.max_context_tokens < 1:
            raise ScenarioError("sessions.max_context_tokens must be >= 1")

    def _check_pd(self) -> None:
        counts = {role: getattr(self, f"{role}_workers") for role in POOL_ROLES}
        for role, n in counts.items():
            if n < 0:
                raise ScenarioError(f"workers.{role}.count must be >= 0")
        if not self.pd:
            if any(counts.values()):
                have, lack = sorted(counts, key=lambda r: -counts[r])
                raise ScenarioError(f"workers.{have}.count = {counts[have]} without workers.{lack}: a PD pool needs "
                                    f"both [workers.prefill] and [workers.decode] with count >= 1")
            for name in PD_FIELDS:
                if name == "kv_bytes_per_token" and self.enable_hierarchical_cache:
                    continue  # HiCache's bandwidths read it too
                if getattr(self, name) != _PD_DEFAULTS[name]:
                    raise ScenarioError(f"{_pd_path(name)} applies only to a PD pool ([workers.prefill] and "
                                        f"[workers.decode] with count >= 1)"
                                        + (" or with HiCache" if name == "kv_bytes_per_token" else "")
                                        + ": remove it or add the pools")
            return
        total = sum(counts.values())
        if self.workers != total:
            raise ScenarioError(f"workers.count = {self.workers}, but a PD pool has workers.prefill.count + "
                                f"workers.decode.count = {total} workers: leave workers.count out")
        if self.engine != "iteration":
            raise ScenarioError(f"workers.engine = {self.engine!r}: PD workers need the iteration-level engine "
                                "(engine = \"iteration\")")
        for role in POOL_ROLES:
            profile, capacity = getattr(self, f"{role}_profile"), getattr(self, f"{role}_kv_capacity_tokens")
            if profile:
                try:
                    load_profile(profile)
                except ProfileError as e:
                    raise ScenarioError(f"workers.{role}.profile: {e}") from e
            if capacity is not None and capacity < 1:
                raise ScenarioError(f"workers.{role}.kv_capacity_tokens must be positive (or 0/'inf' for unbounded)")
        if not isinstance(self.decode_radix_cache, bool):
            raise ScenarioError(f"workers.decode_radix_cache must be true or false, got {self.decode_radix_cache!r}")
        if self.num_reserved_decode_tokens < 0:
            raise ScenarioError("workers.num_reserved_decode_tokens must be >= 0")
        if not self.transfer_bandwidth_gb_s > 0:
            raise ScenarioError("workers.transfer_bandwidth_gb_s must be > 0")
        if self.kv_bytes_per_token is not None and self.kv_bytes_per_token < 1:
            raise ScenarioError("workers.kv_bytes_per_token must be >= 1")
        dead = [f for f in self.faults if f.kind == "dead"]
        if dead:
            raise ScenarioError(f"faults: dead worker {dead[0].worker}: dead workers are not modelled with PD "
                                "(a prefill or decode leg lost mid-transfer); use slow or error_rate faults")

    def _check_hicache(self) -> None:
        if self.page_size < 1:
            raise ScenarioError("workers.page_size must be >= 1")
        for name in ("enable_hierarchical_cache", "disaggregation_decode_enable_offload_kvcache"):
            if not isinstance(getattr(self, name), bool):
                raise ScenarioError(f"workers.{name} must be true or false, got {getattr(self, name)!r}")
        if not self.enable_hierarchical_cache:
            for name in HICACHE_FIELDS:
                if getattr(self, name) != _HICACHE_DEFAULTS[name]:
                    raise ScenarioError(f"workers.{name} applies only with HiCache: add workers."
                                        "enable_hierarchical_cache = true or remove it")
            return
        if self.engine != "iteration":
            raise ScenarioError(f"workers.engine = {self.engine!r}: HiCache needs the iteration-level engine "
                                "(engine = \"iteration\")")
        if not self.hicache_ratio > 0:
            raise ScenarioError("workers.hicache_ratio must be > 0")
        if self.hicache_size < 0:
            raise ScenarioError("workers.hicache_size must be >= 0 (0: the ratio sets the host pool)")
        if self.hicache_write_policy not in HICACHE_WRITE_POLICIES:
            raise ScenarioError(f"workers.hicache_write_policy must be one of {', '.join(HICACHE_WRITE_POLICIES)}, "
                                f"got {self.hicache_write_policy!r}"
                                f"{did_you_mean(self.hicache_write_policy, HICACHE_WRITE_POLICIES)}")
        if self.hicache_storage_prefetch_policy not in HICACHE_PREFETCH_POLICIES:
            raise ScenarioError(f"workers.hicache_storage_prefetch_policy must be one of "
                                f"{', '.join(HICACHE_PREFETCH_POLICIES)}, got {self.hicache_storage_prefetch_policy!r}"
                                f"{did_you_mean(self.hicache_storage_prefetch_policy, HICACHE_PREFETCH_POLICIES)}")
        for name in ("hicache_pcie_bandwidth_gb_s", "hicache_storage_read_bandwidth_gb_s",
                     "hicache_storage_write_bandwidth_gb_s"):
            if not getattr(self, name) > 0:
                raise ScenarioError(f"workers.{name} must be > 0")
        if not self.storage:
            for name in STORAGE_FIELDS:
                if getattr(self, name) != _HICACHE_DEFAULTS[name]:
                    raise ScenarioError(f"workers.{name} applies only with an L3: set workers."
                                        "hicache_storage_backend (any name, e.g. \"mooncake\") or remove it")
        if self.hicache_storage_capacity_tokens is not None and self.hicache_storage_capacity_tokens < 1:
            raise ScenarioError("workers.hicache_storage_capacity_tokens must be positive (or 0/'inf' for unbounded)")
        if self.disaggregation_decode_enable_offload_kvcache and not self.pd:
            raise ScenarioError("workers.disaggregation_decode_enable_offload_kvcache applies only to a PD pool "
                                "([workers.prefill] and [workers.decode] with count >= 1): its decode workers "
                                "offload their KV")

    @property
    def hicache(self) -> bool:
        """Whether the workers run SGLang's hierarchical cache (a host pool, L2, per worker)."""
        return self.enable_hierarchical_cache

    @property
    def storage(self) -> bool:
        """Whether the pool shares a storage tier (HiCache's L3)."""
        return self.enable_hierarchical_cache and bool(self.hicache_storage_backend)

    def without_storage(self) -> Scenario:
        """The same pool without its L3 (HiCache's host pools kept): the baseline of what L3 adds."""
        return self.replace(**{name: _HICACHE_DEFAULTS[name] for name in STORAGE_FIELDS},
                            hicache_storage_backend="")

    @property
    def pd(self) -> bool:
        """Whether the pool is PD-disaggregated: prefill and decode workers of their own."""
        return self.prefill_workers > 0 and self.decode_workers > 0

    @property
    def prompt_only_ceiling(self) -> bool:
        """Whether the ceiling holds prompts only: a PD pool whose prefill workers can never see an answer (no decode
        offload to a shared L3, which publishes each answer where a later prefill finds it)."""
        return self.pd and not (self.storage and self.disaggregation_decode_enable_offload_kvcache)

    def role_of(self, i: int) -> str | None:
        """Worker ``i``'s PD role in pool order (prefill workers first), None when co-located."""
        if not self.pd:
            return None
        return "prefill" if i < self.prefill_workers else "decode"

    def role_profile(self, role: str | None) -> str:
        """The profile a role's workers run ("": LatencyModel's defaults); a co-located pool's for None."""
        return (getattr(self, f"{role}_profile") if role else "") or self.profile

    def role_kv_capacity_tokens(self, role: str | None) -> int | None:
        return getattr(self, f"{role}_kv_capacity_tokens") if role else self.kv_capacity_tokens

    def colocated(self) -> Scenario:
        """The same workload on a co-located pool of the same total worker count, with [workers]' profile and KV
        capacity: the baseline a PD pool is compared with (its HiCache, if any, without the decode offload)."""
        kept = {"kv_bytes_per_token": self.kv_bytes_per_token} if self.hicache else {}
        return self.replace(workers=self.workers, **{**_PD_DEFAULTS, **kept},
                            disaggregation_decode_enable_offload_kvcache=False)

    @property
    def tasks(self) -> int:
        return -(-self.sessions // self.group_size)

    @property
    def first_prompt_tokens(self) -> int:
        """Prompt length of every session's first turn (system + task messages, framed)."""
        return first_prompt_tokens(self.system_prompt_tokens, self.task_prompt_tokens)

    def worker_slowdown(self, i: int) -> float:
        return self.slowdown[i] if i < len(self.slowdown) else 1.0

    def check_multi_turn(self) -> None:
        """Refuse a workload whose sessions could never reach a second turn (what stickiness is about).

        A second turn fits when the first prompt, the shortest answer, a turn's framing, the shortest tool output
        and a second shortest answer stay within ``sessions.max_context_tokens`` (``sim.workload.plans``).
        """
        most_turns = self.turns.int_support(floor=1)[1]
        if most_turns < 2:
            raise ScenarioError(f"turns.count draws at most {most_turns:g} turn: every session would have a "
                                f"single turn; let it reach 2 or more")
        answer = int(self.output_tokens.int_support(floor=2)[0])
        tool = int(self.tool_output_tokens.int_support(floor=1)[0])
        first = self.first_prompt_tokens
        need = first + answer + TURN_FRAMING + tool + answer
        if need > self.max_context_tokens:
            raise ScenarioError(
                f"sessions.max_context_tokens = {self.max_context_tokens} leaves no room for a second turn, which "
                f"needs at least {need} tokens (first prompt {first}: system {self.system_prompt_tokens} + task "
                f"{self.task_prompt_tokens} + {first - self.system_prompt_tokens - self.task_prompt_tokens} "
                f"framing; two answers of {answer}; a tool output of {tool}; {TURN_FRAMING} framing): raise it to "
                f"{need} or shrink the prompts")

    def with_profile(self, name_or_path: str) -> Scenario:
        """A copy whose workers run ``name_or_path``'s latency model and KV capacity (``--profile``); in a PD pool,
        both roles' workers."""
        try:
            capacity = load_profile(name_or_path).kv_capacity_tokens
        except ProfileError as e:
            raise ScenarioError(str(e)) from e
        roles: dict[str, Any] = {}
        if self.pd:
            roles = {f"{role}_{k}": v for role in POOL_ROLES
                     for k, v in (("profile", ""), ("kv_capacity_tokens", capacity))}
        return self.replace(profile=name_or_path, kv_capacity_tokens=capacity, **roles)

    def with_kv_capacity(self, capacity: int | None) -> Scenario:
        """A copy whose workers (both roles' in a PD pool) have ``capacity`` tokens of KV (None: unbounded)."""
        roles = {f"{role}_kv_capacity_tokens": capacity for role in POOL_ROLES} if self.pd else {}
        return self.replace(kv_capacity_tokens=capacity, **roles)

    def with_setting(self, path: str, value: Any) -> Scenario:
        """A copy with one TOML key set (``workers.hicache_storage_read_bandwidth_gb_s``, ``sessions.count``,
        ``workers.prefill.count``, ``seed``), checked as the loader checks it."""
        name = setting_field(path)
        change = _coerce({name: value}, {name: path})
        if name in ("prefill_workers", "decode_workers"):  # a PD pool's count is its pools' sum
            change["workers"] = sum(change.get(f"{r}_workers", getattr(self, f"{r}_workers")) for r in POOL_ROLES)
        scenario = self.replace(**change)
        scenario.check_multi_turn()
        return scenario

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some fields changed (``sessions``, ``workers``, ``kv_capacity_tokens``...)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The flat form (one key per field), as results files store it; ``from_flat`` reads it back."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "profile" and not v:
                continue  # unset: left out, so a scenario without one keeps its results files and scenario hash
            if f.name in PD_FIELDS and not self.pd and not (f.name == "kv_bytes_per_token" and self.hicache):
                continue  # co-located: left out for the same reason
            if (f.name in HICACHE_FIELDS and not self.hicache) or (f.name == "page_size" and v == 1):
                continue  # HiCache off, one-token pages: the same
            if isinstance(v, Dist):
                v = v.to_dict()
            elif f.name == "faults":
                v = [x.to_dict() for x in v]
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_flat(cls, data: Mapping[str, Any]) -> Scenario:
        """The inverse of ``to_dict``."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise ScenarioError(f"unknown scenario field {unknown[0]!r}{did_you_mean(unknown[0], fields)}")
        return cls(**_coerce(dict(data), {k: k for k in data}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> Scenario:
        """Build from the TOML layout (``docs/scenarios.md``), refusing anything it would not use."""
        flat: dict[str, Any] = {}
        paths: dict[str, str] = {}
        known = TOP_KEYS + tuple(TABLES) + ARRAY_TABLES
        for key, value in data.items():
            if key in TOP_KEYS or key in ARRAY_TABLES:
                flat[key], paths[key] = value, key
            elif key in TABLES:
                if not isinstance(value, Mapping):
                    raise ScenarioError(f"{key} must be a table of keys ({', '.join(TABLES[key])}), got {value!r}")
                flat.update(_read_table(key, value, paths))
            else:
                what = "table" if isinstance(value, Mapping) else "key"
                raise ScenarioError(f"unknown {what} {key!r}{did_you_mean(key, known)} "
                                    f"(tables: {', '.join(TABLES)}, faults; keys: {', '.join(TOP_KEYS)})")
        flat.setdefault("name", name)
        paths.setdefault("name", "name")
        pools = [role for role in POOL_ROLES if f"{role}_workers" in flat]
        if pools and "workers" not in flat:  # a PD pool's count is its pools' sum
            flat["workers"] = sum(_coerce({f"{r}_workers": flat[f"{r}_workers"]}, paths)[f"{r}_workers"]
                                  for r in pools)
        scenario = cls(**_coerce(flat, paths))
        if scenario.profile and "kv_capacity_tokens" not in flat:  # an explicit capacity wins over the profile's
            scenario = scenario.replace(kv_capacity_tokens=load_profile(scenario.profile).kv_capacity_tokens)
        if scenario.pd:  # a pool without its own capacity: its own profile's, else [workers]'
            scenario = scenario.replace(**{
                f"{role}_kv_capacity_tokens": load_profile(getattr(scenario, f"{role}_profile")).kv_capacity_tokens
                if getattr(scenario, f"{role}_profile") else scenario.kv_capacity_tokens
                for role in POOL_ROLES if f"{role}_kv_capacity_tokens" not in flat})
        scenario.check_multi_turn()
        return scenario


def _read_table(table: str, sub: Mapping[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """One TOML table's keys as Scenario fields (recording each field's TOML path in ``paths``)."""
    keys = TABLES[table] | (WORKER_KEYS if table == "workers" else {})
    out: dict[str, Any] = {}
    for k, v in sub.items():
        if table == "workers" and k in POOL_ROLES:
            out.update(_read_pool(k, v, paths))
            continue
        if k not in keys:
            known = [*keys, *(POOL_ROLES if table == "workers" else ())]
            raise ScenarioError(f"{table}.{k}: unknown key{did_you_mean(k, known)} ({table} takes: "
                                f"{', '.join(keys)}" + ("; sub-tables prefill, decode)" if table == "workers" else ")"))
        out[keys[k]], paths[keys[k]] = v, f"{table}.{k}"
    if table == "arrivals":
        pattern = sub.get("pattern", "rollout")
        if pattern in ARRIVAL_KEYS:
            for k in sub:
                owners = [p for p, ks in ARRIVAL_KEYS.items() if k in ks]
                if owners and pattern not in owners:
                    raise ScenarioError(f"arrivals.{k} applies only to pattern = {owners[0]!r}, and this scenario's "
                                        f"pattern is {pattern!r}: remove the key or change the pattern")
    return out


def _read_pool(role: str, sub: Any, paths: dict[str, str]) -> dict[str, Any]:
    """A ``[workers.prefill]`` or ``[workers.decode]`` sub-table as Scenario fields."""
    if not isinstance(sub, Mapping):
        raise ScenarioError(f"workers.{role} must be a table of keys ({', '.join(POOL_KEYS)}), got {sub!r}")
    out: dict[str, Any] = {}
    for k, v in sub.items():
        if k not in POOL_KEYS:
            raise ScenarioError(f"workers.{role}.{k}: unknown key{did_you_mean(k, POOL_KEYS)} (workers.{role} "
                                f"takes: {', '.join(POOL_KEYS)})")
        name = f"{role}_{POOL_KEYS[k]}"
        out[name], paths[name] = v, f"workers.{role}.{k}"
    return out


def setting_paths() -> dict[str, str]:
    """Every TOML key a scenario takes as its dotted path -> the Scenario field it sets (``[[faults]]`` aside)."""
    out = {k: k for k in TOP_KEYS}
    for table, keys in TABLES.items():
        out.update({f"{table}.{k}": f for k, f in (keys | (WORKER_KEYS if table == "workers" else {})).items()})
    out.update({f"workers.{role}.{k}": f"{role}_{suffix}" for role in POOL_ROLES for k, suffix in POOL_KEYS.items()})
    return out


def setting_field(path: str) -> str:
    """The Scenario field of a dotted TOML path; ScenarioError naming the closest path for an unknown one."""
    paths = setting_paths()
    if path not in paths:
        raise ScenarioError(f"unknown scenario key {path!r}{did_you_mean(path, paths)} (a dotted TOML path such as "
                            "workers.kv_capacity_tokens or sessions.count)")
    return paths[path]


def _pd_path(name: str) -> str:
    """A PD field's TOML path (``workers.prefill.count``, ``workers.decode_radix_cache``)."""
    for role in POOL_ROLES:
        for key, suffix in POOL_KEYS.items():
            if name == f"{role}_{suffix}":
                return f"workers.{role}.{key}"
    return f"workers.{name}"


def _coerce(flat: dict[str, Any], paths: Mapping[str, str]) -> dict[str, Any]:
    """Check each value's type (naming its path) and convert it to the field's type."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        what = paths.get(k, k)
        if k in INT_FIELDS:
            x = _number(v, what)
            if int(x) != x:
                raise ScenarioError(f"{what} must be an integer, got {v!r}")
            out[k] = int(x)
        elif k in FLOAT_FIELDS:
            out[k] = _number(v, what)
        elif k in DIST_FIELDS:
            out[k] = Dist.parse(v, what)
        elif k in CAPACITY_FIELDS:
            out[k] = parse_capacity(v, what)
        elif k == "kv_bytes_per_token":
            x = None if v is None else _number(v, what)
            if x is not None and int(x) != x:
                raise ScenarioError(f"{what} must be an integer, got {v!r}")
            out[k] = None if x is None else int(x)
        elif k in BOOL_FIELDS:
            if not isinstance(v, bool):
                raise ScenarioError(f"{what} must be true or false, got {v!r}")
            out[k] = v
        elif k == "slowdown":
            if not isinstance(v, list | tuple):
                v = [v]
            out[k] = tuple(_number(x, what) for x in v)
        elif k in STR_FIELDS:
            if not isinstance(v, str):
                raise ScenarioError(f"{what} must be a string, got {v!r}")
            out[k] = v
        else:
            out[k] = v
    return out


def parse_capacity(v: Any, what: str = "kv_capacity_tokens") -> int | None:
    """KV capacity in tokens; ``None``/0/``"inf"``/``"none"`` mean unbounded."""
    if v is None:
        return None
    if isinstance(v, str):
        if v.strip().lower() in ("inf", "none", "unbounded", "0"):
            return None
        try:
            v = float(v)
        except ValueError as e:
            raise ScenarioError(f"{what}: not a number: {v!r}") from e
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        raise ScenarioError(f"{what} must be a number, got {v!r}")
    if v == 0 or v == float("inf"):
        return None
    if v < 0:
        raise ScenarioError(f"{what} must be positive")
    return int(v)


_PD_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Scenario) if f.name in PD_FIELDS}
_HICACHE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Scenario)
                                     if f.name in HICACHE_FIELDS}


# --- built-in scenarios ---------------------------------------------------------------------


def builtin_names() -> list[str]:
    root = resources.files("sim").joinpath("scenarios")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path = "default") -> Scenario:
    """A built-in scenario by name, or a TOML file by path."""
    s = str(name_or_path)
    path = Path(s)
    if s.endswith(".toml") or path.exists():
        if not path.is_file():
            raise ScenarioError(f"scenario file not found: {s}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ScenarioError(f"{s}: {e}") from e
        return Scenario.from_dict(data, name=path.stem)
    root = resources.files("sim").joinpath("scenarios").joinpath(f"{s}.toml")
    if not root.is_file():
        raise ScenarioError(f"unknown scenario {s!r}{did_you_mean(s, builtin_names())} "
                            f"(built-in: {', '.join(builtin_names())}; or a .toml path)")
    return Scenario.from_dict(tomllib.loads(root.read_text()), name=s)
