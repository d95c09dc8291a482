"""The workload model: scenarios (TOML) and the per-session plans drawn from them.

A scenario describes a worker pool and a population of agent sessions. Everything random about
the workload (turn counts, output and tool lengths, tool latency, think time, retries, arrivals)
is drawn here, up front, from one seeded generator, so every policy under test replays exactly the
same plans. The model's answers are not drawn here: the workers derive them from the prompt
(``testbed_common.tokenizer.synth_answer``), so only their *lengths* (``max_tokens``) are planned.

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
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sim.faults import FaultError, FaultSpec, parse_faults
from testbed_common.tokenizer import GENERATION_PROMPT, VOCAB_SIZE, remember_vocab_text, synth_text, vocabulary

ARRIVAL_PATTERNS = ("rollout", "poisson", "concurrency")
DIST_KINDS = ("constant", "uniform", "lognormal", "exponential", "normal", "choice")
MESSAGE_OVERHEAD = 3  # <|im_start|> role ... <|im_end|>


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


# --- plans ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnPlan:
    output_tokens: int  # max_tokens of this turn (exact output length)
    tool_output_tokens: int  # the tool result appended after the answer (unused on the last turn)
    tool_latency: float  # seconds from the answer to the tool result
    think_time: float  # further seconds before the next request
    retry_output_tokens: int = 0  # > 0: the agent drops this answer and asks again with this max_tokens


@dataclass(frozen=True)
class SessionPlan:
    index: int
    group: int  # GRPO group = task index
    start: float | None  # arrival of the first turn; None: when a concurrency slot frees
    turns: tuple[TurnPlan, ...]

    @property
    def requests(self) -> int:
        return len(self.turns) + sum(1 for t in self.turns if t.retry_output_tokens)


def stream_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed for one named stream (system prompt, a task, a session's tools)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, *keys])
    return int(ss.generate_state(2, dtype=np.uint64)[0])


SYSTEM_STREAM, TASK_STREAM, TOOL_STREAM, PLAN_STREAM = 1, 2, 3, 4


# numpy's SeedSequence constants (numpy/random/bit_generator.pyx), for ``stream_seeds``
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4
_M32 = 0xFFFFFFFF


def _seed_sequence_state(words: list[np.ndarray], n_words32: int) -> list[np.ndarray]:
    """``SeedSequence(entropy).generate_state(n_words32, np.uint32)`` for many entropies at once: ``words`` are
    the entropy's uint32 words (one array per position, one row per entropy). The hash constants do not depend
    on the data, so the mixing runs column-wise in Python ints and row-wise in numpy (uint32 wraps around)."""
    u32 = np.uint32
    hc = _INIT_A

    def hashmix(v: np.ndarray) -> np.ndarray:
        nonlocal hc
        v = v ^ u32(hc)
        hc = (hc * _MULT_A) & _M32
        v = v * u32(hc)
        return v ^ (v >> u32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = u32(_MIX_L) * x - u32(_MIX_R) * y
        return r ^ (r >> u32(16))

    zero = np.zeros_like(words[0])
    pool = [hashmix(words[i] if i < len(words) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(words)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(words[src]))
    hb = _INIT_B
    out = []
    for i in range(n_words32):
        v = pool[i % _POOL] ^ u32(hb)
        hb = (hb * _MULT_B) & _M32
        v = v * u32(hb)
        out.append(v ^ (v >> u32(16)))
    return out


def _u64(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo.astype(np.uint64) | (hi.astype(np.uint64) << np.uint64(32))


def stream_seeds(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """``stream_seed(seed, *keys)`` for arrays of keys (broadcast; each key in ``[0, 2**32)``), as uint64."""
    arrs = np.broadcast_arrays(*(np.asarray(k, dtype=np.int64) for k in keys))
    if any(a.size and (a.min() < 0 or a.max() > _M32) for a in arrs):
        raise ValueError("stream_seeds: keys must be within [0, 2**32)")
    shape = arrs[0].shape if arrs else ()
    words = [np.full(shape, seed & _M32, np.uint32), np.full(shape, (seed >> 32) & _M32, np.uint32),
             *(a.astype(np.uint32) for a in arrs)]
    w = _seed_sequence_state([x.ravel() for x in words], 2)
    return _u64(w[0], w[1]).reshape(shape)


_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645
_M128 = (1 << 128) - 1


class ToolTexts:
    """``tool_output(scenario, session, turn, n)`` for the turns of a set of plans, the same text at a small
    fraction of the cost: every stream seed and PCG64 seeding is computed up front in a few vectorised steps
    (``stream_seeds``), and the words are cut from one byte table. ``synth_text`` stays the definition:
    a (session, turn) outside the plans, or a seed numpy would seed differently, takes it."""

    def __init__(self, scenario: Scenario, plans: list[SessionPlan]) -> None:
        self.scenario = scenario
        counts = np.fromiter((len(p.turns) for p in plans), np.int64, len(plans))
        index = np.fromiter((p.index for p in plans), np.int64, len(plans))
        self._row = dict(zip(index.tolist(), (np.cumsum(counts) - counts).tolist(), strict=True))
        self._turns = dict(zip(index.tolist(), counts.tolist(), strict=True))
        total = int(counts.sum())
        sess = np.repeat(index, counts)
        turn = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        seeds = stream_seeds(scenario.seed, TOOL_STREAM, sess, turn) if total else np.zeros(0, np.uint64)
        self._seeds = seeds.tolist()
        # default_rng(s): SeedSequence(s) over s's uint32 words (two unless s < 2**32), then PCG64's 128-bit
        # seed and increment from generate_state(4, uint64)
        lo = (seeds & np.uint64(_M32)).astype(np.uint32)
        hi = (seeds >> np.uint64(32)).astype(np.uint32)
        w = _seed_sequence_state([lo, hi], 8) if total else [np.zeros(0, np.uint32)] * 8
        self._pcg = [_u64(w[2 * i], w[2 * i + 1]).tolist() for i in range(4)]
        self._two_words = (hi != 0).tolist()
        self._bitgen = np.random.PCG64(0)
        self._gen = np.random.Generator(self._bitgen)
        pow2 = VOCAB_SIZE & (VOCAB_SIZE - 1) == 0 and 1 < VOCAB_SIZE <= 1 << 32
        self._shift = np.uint32(32 - VOCAB_SIZE.bit_length() + 1) if pow2 and sys.byteorder == "little" else None
        words = vocabulary()
        width = len(words[0])
        self._table: np.ndarray | None = None
        if all(len(x) == width and x.isascii() for x in words):  # one fixed-width row per word, then a space
            self._table = np.frombuffer("".join(x + " " for x in words).encode("ascii"),
                                        np.uint8).reshape(len(words), width + 1)

    def text(self, session: int, turn: int, n: int) -> str:
        row = self._row.get(session)
        if row is None or not 0 <= turn < self._turns[session] or self._table is None:
            return tool_output(self.scenario, session, turn, n)
        if n <= 0:
            return ""
        i = row + turn
        if not self._two_words[i]:  # a seed below 2**32 has one entropy word: rare, take the definition
            return tool_output(self.scenario, session, turn, n)
        s = self._pcg
        initstate, initseq = (s[0][i] << 64) | s[1][i], (s[2][i] << 64) | s[3][i]
        inc = ((initseq << 1) | 1) & _M128
        state = ((inc + initstate) * _PCG_MULT + inc) & _M128
        bg = self._bitgen
        bg.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc}, "has_uint32": 0, "uinteger": 0}
        if self._shift is None:
            idx = self._gen.integers(0, VOCAB_SIZE, size=n)  # as tokenizer.synth_words draws them
        else:
            # what that draw is for a power-of-two range: Lemire's bounded integer never rejects, each value is
            # the top bits of the next 32-bit output, and those are the halves of the 64-bit outputs, low first
            idx = bg.random_raw((n + 1) // 2).view(np.uint32)[:n] >> self._shift
        text = self._table.take(idx, axis=0).tobytes()[:-1].decode("ascii")
        remember_vocab_text(text, idx)  # the session server takes these ids instead of tokenizing the text again
        return text


def system_prompt(scenario: Scenario) -> str:
    return synth_text(stream_seed(scenario.seed, SYSTEM_STREAM), scenario.system_prompt_tokens)


def task_prompt(scenario: Scenario, group: int) -> str:
    return synth_text(stream_seed(scenario.seed, TASK_STREAM, group), scenario.task_prompt_tokens)


def tool_output(scenario: Scenario, session: int, turn: int, n: int) -> str:
    return synth_text(stream_seed(scenario.seed, TOOL_STREAM, session, turn), n)


def first_prompt_tokens(scenario: Scenario) -> int:
    """Prompt length of a first turn: system + task messages + the generation prompt."""
    return (scenario.system_prompt_tokens + MESSAGE_OVERHEAD + scenario.task_prompt_tokens + MESSAGE_OVERHEAD
            + len(GENERATION_PROMPT))


def plan_sessions(scenario: Scenario) -> list[SessionPlan]:
    """Every session's turns, drawn from the scenario's seed (same seed, same plans)."""
    rng = np.random.default_rng(stream_seed(scenario.seed, PLAN_STREAM))
    n = scenario.sessions
    turn_counts = scenario.turns.sample_int(rng, n, floor=1)
    total = int(turn_counts.sum())
    out_tok = scenario.output_tokens.sample_int(rng, total, floor=2)
    tool_tok = scenario.tool_output_tokens.sample_int(rng, total, floor=1)
    tool_lat = np.maximum(scenario.tool_latency.sample(rng, total), 0.0)
    think = np.maximum(scenario.think_time.sample(rng, total), 0.0)
    retry = rng.random(total) < scenario.retry_rate
    retry_tok = scenario.output_tokens.sample_int(rng, total, floor=2)
    if scenario.arrival == "poisson":
        starts: list[float | None] = np.cumsum(rng.exponential(1.0 / scenario.rate, n)).tolist()
        starts = [0.0, *starts[:-1]]  # the first session opens the run
    elif scenario.arrival == "rollout":
        starts = [0.0] * n
    else:
        starts = [None] * n
    plans = []
    pos = 0
    first = first_prompt_tokens(scenario)
    limit, step = scenario.max_context_tokens, MESSAGE_OVERHEAD + len(GENERATION_PROMPT)
    # plain Python numbers up front (tolist gives the same ints and floats as int()/float() of each element)
    counts_l, out_l, tool_l, retry_l, retry_tok_l = (turn_counts.tolist(), out_tok.tolist(), tool_tok.tolist(),
                                                     retry.tolist(), retry_tok.tolist())
    lat_l, think_l = tool_lat.tolist(), think.tolist()
    for i in range(n):
        turns: list[TurnPlan] = []
        prompt = first
        for k in range(counts_l[i]):
            j = pos + k
            out = out_l[j]
            if prompt + out > limit:
                out = limit - prompt
                if out < 2 or k > 0:
                    break  # the context is full: the session ends
            rt = retry_tok_l[j] if (k > 0 and retry_l[j]) else 0
            if rt and prompt + rt > limit:
                rt = 0
            turns.append(TurnPlan(out, tool_l[j], lat_l[j], think_l[j], rt))
            prompt += (rt or out) + step + tool_l[j]
        if not turns:  # the first prompt alone is near the limit: one short turn
            turns.append(TurnPlan(2, 1, lat_l[pos], think_l[pos], 0))
        pos += counts_l[i]
        plans.append(SessionPlan(i, i // scenario.group_size, starts[i], tuple(turns)))
    return plans


def planned_requests(plans: list[SessionPlan]) -> int:
    return sum(p.requests for p in plans)
