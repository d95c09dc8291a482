"""A results file against a stored baseline: which configurations regressed beyond their tolerance.

Both files are ``results.json`` (``run``, ``compare``, ``replay``) or ``sweep.json``. Rows are matched by their
configuration key (:class:`ConfigKey`): policy, assignment mode, routing key, the gateway's flags as run, the seed,
and the content hash of the row's scenario (a sweep row's own grid point; otherwise the file's scenario). Two files
whose scenarios or ``results_version`` differ cannot be compared (:class:`BaselineMismatch`). A baseline
configuration absent from the current file counts as a regression (nothing shows it did not regress); a current
configuration absent from the baseline is only named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.results import scenario_hash

# fields whose lower values are worse; every other checked field is worse when higher
HIGHER_IS_BETTER = frozenset({"kv_reuse", "oracle_reuse", "eligible_reuse", "stickiness"})
LOWER_IS_BETTER = frozenset({"ttft_p50", "ttft_p99", "ttft_first_p50", "ttft_first_p99", "ttft_later_p50",
                             "ttft_later_p99", "e2e_p50", "e2e_p99", "makespan", "imbalance", "imbalance_requests",
                             "prefill_tokens", "errors", "failed_sessions", "failed_turns", "re_pins"})
CHECKABLE = HIGHER_IS_BETTER | LOWER_IS_BETTER


class BaselineMismatch(ValueError):
    """The two files cannot be compared: unreadable, not a results file, or another scenario or results version."""


@dataclass(frozen=True)
class Tolerance:
    """How far ``field`` may move the wrong way before its row regresses: ``amount`` absolute, or a percentage
    of the baseline value when ``percent``."""

    field: str
    amount: float
    percent: bool = False

    def allowed(self, baseline: float) -> float:
        return abs(baseline) * self.amount / 100 if self.percent else self.amount

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else f"{self.amount:g}"


DEFAULT_TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance("kv_reuse", 0.01),  # one percentage point of reuse
    Tolerance("ttft_p99", 10.0, percent=True),
    Tolerance("makespan", 5.0, percent=True),
    Tolerance("errors", 0.0),
)

_TOLERANCE = re.compile(r"^(?P<field>[a-z0-9_]+)=(?P<amount>[0-9]*\.?[0-9]+)(?P<pct>%?)$")


def parse_tolerance(text: str) -> Tolerance:
    """``FIELD=ABS`` or ``FIELD=PCT%``; ValueError naming the mistake."""
    m = _TOLERANCE.match(text.strip())
    if not m:
        raise ValueError(f"--tolerance wants FIELD=ABS or FIELD=PCT%, e.g. kv_reuse=0.02 or makespan=5%; got {text!r}")
    name = m["field"]
    if name not in CHECKABLE:
        raise ValueError(f"--tolerance {name}: not a checkable field; one of {', '.join(sorted(CHECKABLE))}")
    return Tolerance(name, float(m["amount"]), percent=bool(m["pct"]))


def tolerances_with(overrides: Sequence[Tolerance]) -> tuple[Tolerance, ...]:
    """The default tolerances, each replaced by an override of its field; overrides of other fields added."""
    by_field = {t.field: t for t in DEFAULT_TOLERANCES}
    by_field.update({t.field: t for t in overrides})
    return tuple(by_field.values())


@dataclass(frozen=True)
class ConfigKey:
    """What identifies one configuration across two results files."""

    policy: str | None
    assignment_mode: str | None
    routing_key: bool
    gateway_args: str
    seed: int | None
    scenario_hash: str

    def __str__(self) -> str:
        mode = f"/{self.assignment_mode}" if self.assignment_mode else ""
        return (f"{self.policy}{mode} key={'on' if self.routing_key else 'off'} seed={self.seed} "
                f"[{self.gateway_args}] scenario={self.scenario_hash.removeprefix('sha256:')[:8]}")


@dataclass(frozen=True)
class ResultsFile:
    """The parts of a results file that ``check`` compares."""

    path: str
    results_version: int
    scenario_hash: str
    rows: dict[ConfigKey, Mapping[str, Any]]


def row_key(row: Mapping[str, Any], file_scenario_hash: str) -> ConfigKey:
    args = row.get("gateway_args") or []
    return ConfigKey(row.get("policy"), row.get("assignment_mode"), bool(row.get("routing_key")),
                     args if isinstance(args, str) else " ".join(args), row.get("seed"),
                     row.get("scenario_hash") or file_scenario_hash)


def load_results(path: str | Path) -> ResultsFile:
    """Read a ``results.json`` or ``sweep.json``; BaselineMismatch when it cannot be read as one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineMismatch(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list) or not isinstance(doc.get("scenario"), dict):
        raise BaselineMismatch(f"{path}: not a results.json or sweep.json (no 'scenario' and 'runs')")
    file_hash = scenario_hash(doc["scenario"])
    rows: dict[ConfigKey, Mapping[str, Any]] = {}
    for row in doc["runs"]:
        key = row_key(row, file_hash)
        if key in rows:
            raise BaselineMismatch(f"{path}: two rows of one configuration ({key})")
        rows[key] = row
    return ResultsFile(str(path), int(doc.get("results_version", 1)), file_hash, rows)


@dataclass(frozen=True)
class FieldChange:
    """One field of one configuration whose value differs between baseline and current."""

    config: ConfigKey
    field: str
    baseline: float
    current: float
    tolerance: Tolerance
    regressed: bool

    @property
    def delta(self) -> float:
        return self.current - self.baseline


@dataclass
class Comparison:
    changes: list[FieldChange] = field(default_factory=list)
    missing: list[ConfigKey] = field(default_factory=list)  # in the baseline, not in the current file
    extra: list[ConfigKey] = field(default_factory=list)  # in the current file, not in the baseline
    matched: int = 0

    @property
    def regressions(self) -> list[FieldChange]:
        return [c for c in self.changes if c.regressed]

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.missing)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, list):  # an older row's error messages
        return float(len(value))
    return float(value) if isinstance(value, int | float) else None


def regressed(field_name: str, baseline: float, current: float, tolerance: Tolerance) -> bool:
    worse = baseline - current if field_name in HIGHER_IS_BETTER else current - baseline
    return worse > tolerance.allowed(baseline) + 1e-12


def check_compatible(baseline: ResultsFile, current: ResultsFile) -> None:
    """BaselineMismatch when the two files' figures must not be compared."""
    if baseline.results_version != current.results_version:
        raise BaselineMismatch(f"results_version {current.results_version} in {current.path}, "
                               f"{baseline.results_version} in the baseline {baseline.path}: figures of different "
                               "versions must not be compared (docs/results-versions.md)")
    if baseline.scenario_hash != current.scenario_hash:
        raise BaselineMismatch(f"{current.path} ran another scenario than the baseline {baseline.path} "
                               f"({current.scenario_hash} vs {baseline.scenario_hash})")


def compare_results(baseline: ResultsFile, current: ResultsFile,
                    tolerances: Sequence[Tolerance] = DEFAULT_TOLERANCES) -> Comparison:
    """Every changed field of every configuration in both files, each judged against its tolerance."""
    check_compatible(baseline, current)
    out = Comparison(missing=[k for k in baseline.rows if k not in current.rows],
                     extra=[k for k in current.rows if k not in baseline.rows])
    for key, base_row in baseline.rows.items():
        if key not in current.rows:
            continue
        out.matched += 1
        for tol in tolerances:
            b, c = _number(base_row.get(tol.field)), _number(current.rows[key].get(tol.field))
            if b is None or c is None or b == c:
                continue
            out.changes.append(FieldChange(key, tol.field, b, c, tol, regressed(tol.field, b, c, tol)))
    return out
