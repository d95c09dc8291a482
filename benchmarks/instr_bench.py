"""Instructions per simulated request of the ``direct`` transport: a speed figure the machine's noise does not move.

Wall-clock rates on a shared VM swing by 10-20 % from minute to minute (``sim_bench.py`` measures the same code at
3,700-5,100 requests/s), which hides any change worth less than that. Counting the instructions the CPU retires
does not: valgrind's cachegrind counts them exactly (here with no cache simulation), and with hash randomisation
and address-space randomisation off, and one BLAS thread (an idle OpenBLAS pool spins a varying while), the count
repeats to within a few thousand instructions in billions. Two runs of ``large`` under
``manual/min_load`` with the routing key, ``--sessions`` and ``2 x --sessions`` of it, side by side on two cores;
their difference divided by the difference in requests is the marginal cost of one request, without the
interpreter's start-up, the imports and the set-up, which both runs pay alike.

    .venv/bin/python benchmarks/instr_bench.py [--sessions 200] [--tree DIR]

``--tree DIR`` measures another checkout's code with this venv (``PYTHONPATH=DIR``), for before/after figures:
``git worktree add /tmp/before HEAD~1`` then ``--tree /tmp/before``. Needs ``valgrind`` on PATH (Debian's
package); it says so and exits 2 when it is missing. Instructions are not time (a memcpy retires few instructions
per byte, a cache miss costs many cycles for one), but for one program on one machine they move together.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys
from sim.runner import PolicyConfig, make_setup, run_setup
from sim.workload.scenario import load_scenario
s = load_scenario("large").replace(sessions=int(sys.argv[1]))
row = run_setup(make_setup(s, PolicyConfig("manual", "min_load"), True), "direct")
print("requests", row["requests"], "errors", row["errors"], "kv_reuse", repr(row["kv_reuse"]))
"""


def count(sessions: int, tree: Path) -> tuple[int, int]:
    """(instructions, requests) of one ``direct`` run of ``sessions`` sessions under cachegrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cachegrind.out"
        cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
               sys.executable, "-c", CHILD, str(sessions)]
        if shutil.which("setarch"):
            cmd = ["setarch", "-R", *cmd]  # no address-space randomisation: the same allocations every run
        # one BLAS thread: an idle OpenBLAS pool spins for a while, a varying count of instructions not the run's
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1"}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=3600)
    refs = re.search(r"I\s+refs:\s+([\d,]+)", p.stderr)
    done = re.search(r"requests (\d+) errors (\d+)", p.stdout)
    if p.returncode != 0 or refs is None or done is None:
        raise SystemExit(f"run of {sessions} sessions failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr[-2000:]}")
    if int(done.group(2)):
        raise SystemExit(f"run of {sessions} sessions had {done.group(2)} errors")
    return int(refs.group(1).replace(",", "")), int(done.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=200,
                    help="sessions of the smaller run (the larger runs twice as many)")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code is measured (default: this one)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind); nothing measured", file=sys.stderr)
        raise SystemExit(2)
    if args.sessions < 1:
        ap.error("--sessions must be at least 1")
    tree = args.tree.resolve()
    print(f"counting instructions of `direct` on `large` (code: {tree}), {args.sessions} and {2 * args.sessions} "
          f"sessions side by side ...", flush=True)
    with ThreadPoolExecutor(2) as pool:
        small, big = pool.map(lambda n: count(n, tree), (args.sessions, 2 * args.sessions))
    (i1, r1), (i2, r2) = small, big
    per_request = (i2 - i1) / (r2 - r1)
    print(f"  {args.sessions:5d} sessions: {r1:6d} requests, {i1 / 1e9:7.3f} G instructions")
    print(f"  {2 * args.sessions:5d} sessions: {r2:6d} requests, {i2 / 1e9:7.3f} G instructions")
    print(f"  instructions per simulated request (marginal): {per_request / 1e3:.1f} k")
    print(f"  fixed part (interpreter, imports, set-up): {(i1 - per_request * r1) / 1e9:.2f} G instructions")


if __name__ == "__main__":
    main()
