import pytest

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


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path
