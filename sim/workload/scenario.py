"""Scenarios: a worker pool and a population of agent sessions, as TOML, with the distributions of their turns.

What the distributions draw, up front and seeded, is in ``sim.workload.plans``; the texts, in ``sim.workload.texts``.

Scenario TOML (every table and key optional; built-ins live in ``sim/scenarios/*.toml``)::

    name = "default"
    description = "..."
    seed = 0

    [workers]
    count = 8
    kv_capacity_tokens = 400000      # 0 or "inf": unbounded
    max_running_requests = 256
    slowdown = [3.0]                 # per-worker multipliers, worker i gets slowdown[i] (default 1.0)

    [sessions]
    count = 64
    group_size = 8                   # GRPO: consecutive sessions share a task prompt
    system_prompt_tokens = 2000      # shared by every session
    task_prompt_tokens = 400         # shared by a group
    max_context_tokens = 30000       # a session ends before its prompt + output would exceed this
    retry_rate = 0.0                 # per turn (from the 2nd): the agent drops the answer and asks again

    [arrivals]
    pattern = "rollout"              # rollout (all at t=0) | poisson | concurrency
    rate = 1.0                       # poisson: sessions per second
    concurrency = 16                 # concurrency: sessions in flight

    [turns]                          # distributions (see ``Dist``)
    count = { dist = "lognormal", median = 15, sigma = 0.5, min = 2, max = 60 }
    output_tokens = { dist = "lognormal", median = 250, sigma = 0.7, min = 8 }
    tool_output_tokens = { dist = "lognormal", median = 500, sigma = 1.0, min = 8 }
    tool_latency = { dist = "lognormal", median = 2.0, sigma = 1.0 }
    think_time = 0.0                 # a bare number is a constant

    [[faults]]                       # optional, any number: see ``sim.faults`` (virtual seconds)
    kind = "dead"                    # dead (worker, start, end) | slow (worker?, factor, start?, end?)
    worker = 1                       # | error_rate (worker?, rate: upstream 5xx share)
    start = 20.0                     # | rollback_rate (worker?, rate: 400 "rollback failed" share
    end = 60.0                       #   of requests that carry input_ids)
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sim.faults import FaultError, FaultSpec, parse_faults

ARRIVAL_PATTERNS = ("rollout", "poisson", "concurrency")
DIST_KINDS = ("constant", "uniform", "lognormal", "exponential", "normal", "choice")


class ScenarioError(ValueError):
    """A scenario file or override that cannot be used."""


@dataclass(frozen=True)
class Dist:
    """A one-dimensional distribution, clipped to ``[min, max]``.

    kinds: ``constant`` (value), ``uniform`` (low, high), ``lognormal`` (median, sigma),
    ``exponential`` (mean), ``normal`` (mean, std), ``choice`` (values, optional weights).
    """

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
        if isinstance(spec, Dist):
            return spec
        if isinstance(spec, bool):
            raise ScenarioError(f"{what}: expected a number or a table, got {spec!r}")
        if isinstance(spec, int | float):
            return cls(kind="constant", value=float(spec))
        if not isinstance(spec, Mapping):
            raise ScenarioError(f"{what}: expected a number or a table, got {spec!r}")
        spec = dict(spec)
        kind = spec.pop("dist", spec.pop("kind", "constant"))
        if kind not in DIST_KINDS:
            raise ScenarioError(f"{what}: unknown dist {kind!r} (one of {', '.join(DIST_KINDS)})")
        known = {f.name for f in dataclasses.fields(cls)} - {"kind"}
        unknown = set(spec) - known
        if unknown:
            raise ScenarioError(f"{what}: unknown keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {"kind": kind}
        for k, v in spec.items():
            if k in ("values", "weights"):
                if not isinstance(v, list) or not all(isinstance(x, int | float) for x in v):
                    raise ScenarioError(f"{what}: {k} must be a list of numbers")
                kwargs[k] = tuple(float(x) for x in v)
            else:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ScenarioError(f"{what}: {k} must be a number, got {v!r}")
                kwargs[k] = float(v)
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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.kind}
        params = {"constant": ("value",), "uniform": ("low", "high"), "lognormal": ("median", "sigma"),
                  "exponential": ("mean",), "normal": ("mean", "std"), "choice": ("values", "weights")}[self.kind]
        for p in params:
            v = getattr(self, p)
            if p == "weights" and not v:
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
    kv_capacity_tokens: int | None = 400_000
    max_running_requests: int = 256
    slowdown: tuple[float, ...] = ()
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

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "faults", parse_faults(self.faults, self.workers))
        except FaultError as e:
            raise ScenarioError(str(e)) from e
        for k in ("turns", "output_tokens", "tool_output_tokens", "tool_latency", "think_time"):
            object.__setattr__(self, k, Dist.parse(getattr(self, k), k))
        if self.workers < 1:
            raise ScenarioError("workers.count must be >= 1")
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < 1:
            raise ScenarioError("workers.kv_capacity_tokens must be positive (or 0/'inf' for unbounded)")
        if self.sessions < 1 or self.group_size < 1:
            raise ScenarioError("sessions.count and sessions.group_size must be >= 1")
        if self.arrival not in ARRIVAL_PATTERNS:
            raise ScenarioError(f"arrivals.pattern must be one of {', '.join(ARRIVAL_PATTERNS)}")
        if self.arrival == "poisson" and self.rate <= 0:
            raise ScenarioError("arrivals.rate must be > 0")
        if self.arrival == "concurrency" and self.concurrency < 1:
            raise ScenarioError("arrivals.concurrency must be >= 1")
        if not 0.0 <= self.retry_rate <= 1.0:
            raise ScenarioError("sessions.retry_rate must be within [0, 1]")
        if min(self.system_prompt_tokens, self.task_prompt_tokens) < 0 or self.max_context_tokens < 1:
            raise ScenarioError("token counts must be non-negative")
        if any(s <= 0 for s in self.slowdown):
            raise ScenarioError("workers.slowdown entries must be > 0")

    @property
    def tasks(self) -> int:
        return -(-self.sessions // self.group_size)

    def worker_slowdown(self, i: int) -> float:
        return self.slowdown[i] if i < len(self.slowdown) else 1.0

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some fields changed (``sessions``, ``workers``, ``kv_capacity_tokens``...)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Dist):
                v = v.to_dict()
            elif f.name == "faults":
                v = [x.to_dict() for x in v]
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> Scenario:
        """Build from the TOML layout (tables) or from a flat ``to_dict()`` mapping."""
        data = dict(data)
        flat: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        tables = {
            "workers": {"count": "workers", "kv_capacity_tokens": "kv_capacity_tokens",
                        "max_running_requests": "max_running_requests", "slowdown": "slowdown"},
            "sessions": {"count": "sessions", "group_size": "group_size",
                         "system_prompt_tokens": "system_prompt_tokens", "task_prompt_tokens": "task_prompt_tokens",
                         "max_context_tokens": "max_context_tokens", "retry_rate": "retry_rate"},
            "arrivals": {"pattern": "arrival", "rate": "rate", "concurrency": "concurrency"},
            "turns": {"count": "turns", "output_tokens": "output_tokens", "tool_output_tokens": "tool_output_tokens",
                      "tool_latency": "tool_latency", "think_time": "think_time"},
        }
        for table, keys in tables.items():
            if table in data and isinstance(data[table], Mapping) and "dist" not in data[table]:
                # (a flat ``to_dict()`` mapping has a ``turns`` distribution, which carries ``dist``)
                sub = dict(data.pop(table))
                for k, v in sub.items():
                    if k not in keys:
                        raise ScenarioError(f"[{table}]: unknown key {k!r} (known: {', '.join(keys)})")
                    flat[keys[k]] = v
        for k, v in data.items():
            if k not in known:
                raise ScenarioError(f"unknown scenario key {k!r}")
            flat[k] = v
        flat.setdefault("name", name)
        return cls(**_coerce(flat))


def _coerce(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ints = {"seed", "workers", "max_running_requests", "sessions", "group_size", "system_prompt_tokens",
            "task_prompt_tokens", "max_context_tokens", "concurrency"}
    floats = {"retry_rate", "rate"}
    dists = {"turns", "output_tokens", "tool_output_tokens", "tool_latency", "think_time"}
    for k, v in flat.items():
        if k in ints:
            if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
                raise ScenarioError(f"{k} must be an integer, got {v!r}")
            out[k] = int(v)
        elif k in floats:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ScenarioError(f"{k} must be a number, got {v!r}")
            out[k] = float(v)
        elif k in dists:
            out[k] = Dist.parse(v, k)
        elif k == "kv_capacity_tokens":
            out[k] = parse_capacity(v)
        elif k == "slowdown":
            if isinstance(v, int | float) and not isinstance(v, bool):
                v = [v]
            if not isinstance(v, list | tuple) or not all(isinstance(x, int | float) for x in v):
                raise ScenarioError("slowdown must be a list of numbers")
            out[k] = tuple(float(x) for x in v)
        elif k in ("name", "description", "arrival"):
            out[k] = str(v)
        else:
            out[k] = v
    return out


def parse_capacity(v: Any) -> int | None:
    """KV capacity in tokens; ``None``/0/``"inf"``/``"none"`` mean unbounded."""
    if v is None:
        return None
    if isinstance(v, str):
        if v.strip().lower() in ("inf", "none", "unbounded", "0"):
            return None
        try:
            v = float(v)
        except ValueError as e:
            raise ScenarioError(f"kv_capacity_tokens: not a number: {v!r}") from e
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ScenarioError(f"kv_capacity_tokens must be a number, got {v!r}")
    if v == 0 or v == float("inf"):
        return None
    if v < 0:
        raise ScenarioError("kv_capacity_tokens must be positive")
    return int(v)


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
        raise ScenarioError(f"unknown scenario {s!r} (built-in: {', '.join(builtin_names())}; or a .toml path)")
    return Scenario.from_dict(tomllib.loads(root.read_text()), name=s)
