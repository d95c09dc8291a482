"""The version of the testbed's results: what its figures mean, in every results file it writes.

A version changes when the same command, scenario and seed give other figures by design (not by a bug fix
alone); figures of different versions must not be compared. What each version changed: docs/results-versions.md.
"""

from __future__ import annotations

RESULTS_VERSION = 2  # 2: drawn words and logprobs from a keyed Philox (numpy's public API); 1: unversioned files
