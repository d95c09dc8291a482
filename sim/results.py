"""What every results file says about its figures: their version and their provenance.

``RESULTS_VERSION``: a version changes when the same command, scenario and seed give other figures by design
(not by a bug fix alone); figures of different versions must not be compared. What each version changed:
docs/results-versions.md.

``provenance(scenario, runs)``: what produced a results file, so that it can be reproduced or compared safely
(``results.json``, ``sweep.json``, ``sweep.csv``): the testbed's version, its git commit (and whether the tree
had uncommitted changes), the command line, the scenario's content hash, the real ``smg`` binary's version when
a run used it (the one ``--smg-bin``/``SMG_BIN`` chose), and the versions of Python and of the libraries the
figures depend on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from sim.real_smg import SmgBinaryError, resolve_smg

# 3: the iteration-level engine under the co-simulated clock; 2: drawn words and logprobs from a keyed Philox
# (numpy's public API); 1: unversioned files (docs/results-versions.md)
RESULTS_VERSION = 3

# the libraries whose behaviour the figures depend on (draws, the event loop, ring and prefix hashes, metrics)
LIBRARIES = ("numpy", "simpy", "blake3", "xxhash", "prometheus-client")
# labels of a scenario, not content: a built-in scenario and a file copy of it under another name hash the same
SCENARIO_LABELS = ("name", "description")
GIT_TIMEOUT = 5.0


def scenario_hash(scenario: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the scenario's canonical content: its ``to_dict()`` without its labels, as sorted JSON."""
    content = {k: v for k, v in scenario.items() if k not in SCENARIO_LABELS}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout the testbed runs from; None outside one (an installed package)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def smg_version(path: str | None = None) -> str | None:
    """``--version`` of the real gateway binary runs use (``sim.real_smg.resolve_smg``: ``path``, else
    ``$SMG_BIN``, else the installed ``smg``), e.g. ``smg 1.13.0``; None when there is none."""
    try:
        return resolve_smg(path).version
    except SmgBinaryError:
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (``sys.argv`` by default), shell-quoted, the program by its name only."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else ""


def provenance(scenario: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
               argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What produced ``runs`` of ``scenario`` (a ``Scenario.to_dict()``); see the module docstring."""
    real_smg = any(r.get("gateway") == "smg" for r in runs)
    return {
        "smg_testbed_version": _version("smg-testbed"),
        "git": git_state(),
        "command_line": command_line(argv),
        "scenario_hash": scenario_hash(scenario),
        "smg_version": smg_version() if real_smg else None,
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def provenance_columns(prov: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance as flat CSV columns (the same for every row of a file)."""
    git = prov.get("git") or {}
    return {"smg_testbed_version": prov["smg_testbed_version"], "git_commit": git.get("commit"),
            "git_dirty": git.get("dirty"), "scenario_hash": prov["scenario_hash"],
            "smg_version": prov["smg_version"], "command_line": prov["command_line"]}
