"""Wall time of one 32-configuration sweep grid run three ways: one process, the local process pool
(``--executor local``) and one Ray task per configuration on a local Ray instance (``--executor ray``), with
their speed-ups over one process and a check that the three give the same rows.

The grid: ``manual`` random / min_load / min_group and ``consistent_hashing`` x routing key on/off x 4 or 8
workers x seeds 0 and 1 of the ``default`` scenario (``--sessions N`` shrinks it), over ``direct``.

    .venv/bin/python benchmarks/sweep_bench.py [--sessions N] [--jobs N]
"""

from __future__ import annotations

import argparse
import itertools
import time

import ray

from sim.commands.common import console_for, default_jobs, run_many
from sim.runner import PolicyConfig, make_setup
from sim.transports.pool import Setup
from sim.workload.scenario import load_scenario

POLICIES = (PolicyConfig("manual", "random"), PolicyConfig("manual", "min_load"), PolicyConfig("manual", "min_group"),
            PolicyConfig("consistent_hashing"))
MEASURES = ("kv_reuse", "ttft_p99", "makespan", "prefill_tokens", "errors")


def grid(sessions: int | None) -> list[Setup]:
    base = load_scenario("default")
    if sessions:
        base = base.replace(sessions=sessions)
    return [make_setup(base.replace(workers=w, seed=seed), pc, key, seed)
            for pc, key, w, seed in itertools.product(POLICIES, (True, False), (4, 8), (0, 1))]


def timed(setups: list[Setup], jobs: int, executor: str) -> tuple[float, list[tuple]]:
    t0 = time.perf_counter()
    rows = run_many(setups, "direct", jobs, console_for(quiet=True), executor=executor, show_progress=False)
    return time.perf_counter() - t0, [tuple(r[m] for m in MEASURES) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=None, help="sessions per run (default: the scenario's)")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="processes / Ray CPUs (default: CPU count)")
    args = p.parse_args()
    setups = grid(args.sessions)
    print(f"{len(setups)} configurations of `default` ({setups[0].scenario.sessions} sessions), {args.jobs} jobs")
    one, rows = timed(setups, 1, "local")
    local, local_rows = timed(setups, args.jobs, "local")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.jobs, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start = time.perf_counter() - t0
    try:
        on_ray, ray_rows = timed(setups, args.jobs, "ray")
    finally:
        ray.shutdown()
    assert local_rows == rows and ray_rows == rows, "the executors gave different rows"
    print(f"one process: {one:7.1f} s")
    print(f"local pool:  {local:7.1f} s  speed-up {one / local:.2f}x")
    print(f"ray:         {on_ray:7.1f} s  speed-up {one / on_ray:.2f}x (ray.init took {ray_start:.1f} s more)")
    print("rows: identical across the three")


if __name__ == "__main__":
    main()
