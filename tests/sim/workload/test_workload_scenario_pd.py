"""PD scenarios: [workers.prefill] and [workers.decode] pools of their own counts, capacities and profiles, the PD
parameters in [workers], the flat form's round trip, and the refusals that name the key and the fix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.profiles.catalog import load_profile
from sim.workload.scenario import PD_FIELDS, Scenario, ScenarioError, load_scenario

GLM = "glm-4.7-flash-h200-tp1"
SMALL = "llama-3.1-8b-h100-tp1"


def load_text(tmp_path, text: str) -> Scenario:
    f = tmp_path / "mine.toml"
    f.write_text(text)
    return load_scenario(str(f))


def refusal(tmp_path, text: str) -> str:
    with pytest.raises(ScenarioError) as e:
        load_text(tmp_path, text)
    return str(e.value)


POOLS = "[workers.prefill]\ncount = 2\n[workers.decode]\ncount = 3\n"


def test_the_pd_scenario_is_two_prefill_and_six_decode_glm_workers():
    s = load_scenario("pd")
    assert s.pd and (s.prefill_workers, s.decode_workers, s.workers) == (2, 6, 8)
    assert [s.role_of(i) for i in range(8)] == ["prefill"] * 2 + ["decode"] * 6
    assert s.kv_bytes_per_token == 54_144 == load_profile(GLM).kv_bytes_per_token
    assert s.role_profile("prefill") == s.role_profile("decode") == GLM
    assert s.prefill_kv_capacity_tokens == s.decode_kv_capacity_tokens == load_profile(GLM).kv_capacity_tokens
    assert (s.sessions, s.group_size, s.engine, s.decode_radix_cache) == (64, 8, "iteration", False)


def test_pd_long_answers_has_answers_of_a_reasoning_model():
    s = load_scenario("pd-long-answers")
    assert s.pd and 1000 <= s.output_tokens.median <= 2000
    assert s.output_tokens.median > 10 * load_scenario("pd").output_tokens.median


@pytest.mark.parametrize("name", ["pd", "pd-long-answers"])
def test_a_pd_scenario_round_trips_through_its_flat_form(name):
    s = load_scenario(name)
    assert Scenario.from_flat(s.to_dict()) == s
    assert set(PD_FIELDS) <= set(s.to_dict())


def test_a_colocated_scenario_keeps_its_flat_form_without_pd_fields():
    flat = load_scenario("default").to_dict()
    assert not set(PD_FIELDS) & set(flat)
    assert Scenario.from_flat(flat) == load_scenario("default")


@given(prefill=st.integers(1, 6), decode=st.integers(1, 6), radix=st.booleans(),
       reserved=st.integers(0, 4096), bandwidth=st.floats(0.5, 400.0), kv_bytes=st.none() | st.integers(1, 10**6),
       capacities=st.tuples(st.none() | st.integers(1, 10**7), st.none() | st.integers(1, 10**7)))
def test_any_pd_pool_round_trips(prefill, decode, radix, reserved, bandwidth, kv_bytes, capacities):
    s = Scenario(workers=prefill + decode, prefill_workers=prefill, decode_workers=decode, decode_radix_cache=radix,
                 num_reserved_decode_tokens=reserved, transfer_bandwidth_gb_s=bandwidth, kv_bytes_per_token=kv_bytes,
                 prefill_kv_capacity_tokens=capacities[0], decode_kv_capacity_tokens=capacities[1])
    assert Scenario.from_flat(s.to_dict()) == s


def test_the_pool_count_is_the_sum_of_the_roles(tmp_path):
    s = load_text(tmp_path, POOLS)
    assert s.workers == 5 and [s.role_of(i) for i in range(5)] == ["prefill"] * 2 + ["decode"] * 3
    assert load_text(tmp_path, "[workers]\ncount = 5\n" + POOLS) == s


def test_a_pool_takes_its_own_capacity_else_its_profiles_else_the_workers_table(tmp_path):
    s = load_text(tmp_path, f'[workers]\nkv_capacity_tokens = 123456\n[workers.prefill]\ncount = 1\nprofile = "{GLM}"\n'
                            "[workers.decode]\ncount = 1\n")
    assert s.prefill_kv_capacity_tokens == load_profile(GLM).kv_capacity_tokens and s.role_profile("prefill") == GLM
    assert s.decode_kv_capacity_tokens == 123_456 and s.role_profile("decode") == ""
    s = load_text(tmp_path, f'[workers]\nprofile = "{SMALL}"\n[workers.prefill]\ncount = 1\nkv_capacity_tokens = 9000\n'
                            '[workers.decode]\ncount = 1\nkv_capacity_tokens = "inf"\n')
    assert (s.prefill_kv_capacity_tokens, s.decode_kv_capacity_tokens) == (9000, None)
    assert s.role_profile("decode") == SMALL and s.kv_capacity_tokens == load_profile(SMALL).kv_capacity_tokens


def test_the_colocated_baseline_has_the_same_total_workers_and_profile():
    s = load_scenario("pd")
    c = s.colocated()
    assert not c.pd and c.workers == s.workers and c.profile == s.profile
    assert c.kv_capacity_tokens == s.kv_capacity_tokens and c.sessions == s.sessions and c.turns == s.turns
    assert c.role_of(0) is None and c.to_dict() == {k: v for k, v in s.to_dict().items() if k not in PD_FIELDS}


def test_a_profile_or_capacity_override_reaches_both_roles():
    s = load_scenario("pd").with_profile(SMALL)
    cap = load_profile(SMALL).kv_capacity_tokens
    assert s.role_profile("prefill") == s.role_profile("decode") == SMALL
    assert s.prefill_kv_capacity_tokens == s.decode_kv_capacity_tokens == cap
    s = s.with_kv_capacity(None)
    assert s.kv_capacity_tokens is s.prefill_kv_capacity_tokens is s.decode_kv_capacity_tokens is None


@pytest.mark.parametrize(("text", "expected"), [
    ("[workers.prefill]\ncount = 2\n", "workers.prefill.count = 2 without workers.decode: a PD pool needs both"),
    ("[workers.decode]\ncount = 1\n[workers.prefill]\ncount = 0\n", "workers.decode.count = 1 without workers.prefill"),
    ("[workers]\ncount = 8\n" + POOLS, "workers.count = 8, but a PD pool has workers.prefill.count + "
                                       "workers.decode.count = 5 workers: leave workers.count out"),
    ('[workers]\nengine = "arrival"\n' + POOLS, "PD workers need the iteration-level engine"),
    ("[workers]\ndecode_radix_cache = true\n", "workers.decode_radix_cache applies only to a PD pool"),
    ("[workers]\ntransfer_bandwidth_gb_s = 10\n", "workers.transfer_bandwidth_gb_s applies only to a PD pool"),
    ("[workers]\ndecode_radix_cache = 1\n" + POOLS, "workers.decode_radix_cache must be true or false"),
    ("[workers]\ntransfer_bandwidth_gb_s = 0\n" + POOLS, "workers.transfer_bandwidth_gb_s must be > 0"),
    ("[workers]\nkv_bytes_per_token = 1.5\n" + POOLS, "workers.kv_bytes_per_token must be an integer"),
    ("[workers]\nnum_reserved_decode_tokens = -1\n" + POOLS, "workers.num_reserved_decode_tokens must be >= 0"),
    ("[workers.prefill]\ncount = 1\ncolour = 2\n[workers.decode]\ncount = 1\n", "workers.prefill.colour: unknown key"),
    ("[workers.prefill]\ncount = 1\nprofile = \"nope\"\n[workers.decode]\ncount = 1\n", "workers.prefill.profile:"),
    ("[workers]\nprefil = 2\n", "workers.prefil: unknown key (did you mean 'prefill'?)"),
    ("[workers]\nprefill = 2\n", "workers.prefill must be a table of keys (count, kv_capacity_tokens, profile)"),
    (POOLS + "[[faults]]\nkind = \"dead\"\nworker = 3\nstart = 1\nend = 2\n",
     "faults: dead worker 3: dead workers are not modelled with PD"),
])
def test_a_pd_pool_refuses_what_it_cannot_use(tmp_path, text, expected):
    assert expected in refusal(tmp_path, text)


def test_other_faults_are_accepted_on_a_pd_pool(tmp_path):
    s = load_text(tmp_path, POOLS + '[[faults]]\nkind = "slow"\nworker = 4\nfactor = 2.0\n')
    assert s.pd and s.faults[0].worker == 4


def test_a_worker_count_override_of_a_pd_pool_is_refused():
    with pytest.raises(ScenarioError, match=r"leave workers\.count out"):
        load_scenario("pd").replace(workers=3)
