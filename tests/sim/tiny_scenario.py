"""A tiny scenario for command-level tests: 6 sessions of 2-5 turns on 2 workers (runs in about a second)."""

from pathlib import Path

TINY_TOML = """
name = "tiny"
seed = 3
[workers]
count = 2
kv_capacity_tokens = 50000
[sessions]
count = 6
group_size = 3
system_prompt_tokens = 100
task_prompt_tokens = 20
max_context_tokens = 2000
[turns]
count = { dist = "uniform", low = 2, high = 5 }
output_tokens = { dist = "lognormal", median = 20, sigma = 0.5, min = 4 }
tool_output_tokens = { dist = "lognormal", median = 40, sigma = 0.5, min = 4 }
tool_latency = 0.5
"""


def write_tiny(directory: Path, extra: str = "") -> Path:
    """The tiny scenario as a TOML file in ``directory``; ``extra`` lines go into its ``[sessions]`` table."""
    path = directory / "tiny.toml"
    path.write_text(TINY_TOML.replace("[turns]", f"{extra}[turns]") if extra else TINY_TOML)
    return path
