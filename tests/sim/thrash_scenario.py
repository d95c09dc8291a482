"""A small scenario whose iteration-level engines retract: long answers on a small pool (runs in ~0.2 s)."""

from sim.workload.scenario import Scenario

THRASH = Scenario(name="thrash", seed=1, workers=2, kv_capacity_tokens=6000, sessions=12, group_size=4,
                  system_prompt_tokens=200, task_prompt_tokens=50, max_context_tokens=3000,
                  turns={"dist": "uniform", "low": 3, "high": 6},
                  output_tokens={"dist": "lognormal", "median": 600, "sigma": 0.5, "min": 8},
                  tool_output_tokens={"dist": "lognormal", "median": 100, "sigma": 0.5, "min": 8},
                  tool_latency={"dist": "constant", "value": 0.5})
