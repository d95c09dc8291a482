"""``[workers] profile``: a shipped profile's name or a path; it sets the workers' latency model, scheduler (chunked
prefill, prefill budget) and KV capacity, and an explicit ``kv_capacity_tokens`` beside it wins."""

from __future__ import annotations

import pytest

from sim.engine.types import LatencyModel, SchedulerConfig
from sim.profiles.catalog import load_profile
from sim.transports.pool import worker_configs
from sim.workload.scenario import Scenario, ScenarioError

H200_8B = "llama-3.1-8b-h200-tp1"


def test_a_profile_sets_the_kv_capacity_and_the_workers_latency_model():
    s = Scenario.from_dict({"workers": {"profile": H200_8B}})
    profile = load_profile(H200_8B)
    assert s.profile == H200_8B and s.kv_capacity_tokens == profile.kv_capacity_tokens
    assert {(c.latency, c.kv_capacity_tokens, c.scheduler, c.request_overhead) for c in worker_configs(s)} == \
        {(profile.latency_model(), profile.kv_capacity_tokens, profile.scheduler_config(), profile.request_overhead)}


def test_a_profile_without_chunking_reaches_the_iteration_engine(tmp_path):
    text = load_profile(H200_8B).to_toml().replace("chunked_prefill_size = 8192", "chunked_prefill_size = -1")
    path = tmp_path / "p.toml"
    path.write_text(text)
    s = Scenario.from_dict({"workers": {"profile": str(path)}})
    assert {c.scheduler.chunked_prefill_size for c in worker_configs(s)} == {None}


def test_an_explicit_capacity_wins_over_the_profile():
    s = Scenario.from_dict({"workers": {"profile": H200_8B, "kv_capacity_tokens": 12_345}})
    assert s.kv_capacity_tokens == 12_345
    assert worker_configs(s)[0].latency == load_profile(H200_8B).latency_model()


def test_no_profile_keeps_the_default_latency_model_and_leaves_the_results_as_they_were():
    s = Scenario()
    assert all(c.latency == LatencyModel() and c.scheduler == SchedulerConfig() and c.request_overhead == 0
               for c in worker_configs(s))
    assert "profile" not in s.to_dict()  # so the scenario hash of every profile-less results file is unchanged


def test_a_profile_is_recorded_in_the_flat_form_and_read_back():
    s = Scenario.from_dict({"workers": {"profile": H200_8B}})
    assert s.to_dict()["profile"] == H200_8B and Scenario.from_flat(s.to_dict()) == s


def test_a_profile_path_is_accepted(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(load_profile("qwen3-8b-h100-tp1").to_toml().replace("qwen3-8b-h100-tp1", "mine"))
    s = Scenario.from_dict({"workers": {"profile": str(f)}})
    assert s.kv_capacity_tokens == load_profile("qwen3-8b-h100-tp1").kv_capacity_tokens


def test_with_profile_overrides_the_scenario_capacity():
    s = Scenario.from_dict({"workers": {"kv_capacity_tokens": 1000}}).with_profile(H200_8B)
    assert (s.profile, s.kv_capacity_tokens) == (H200_8B, load_profile(H200_8B).kv_capacity_tokens)


@pytest.mark.parametrize(("value", "message"), [
    ("llama-3.1-8b-h200", r"workers.profile: unknown profile 'llama-3.1-8b-h200' \(did you mean 'llama-3.1-8b-h200-"),
    ("missing.toml", r"workers.profile: profile file not found: missing.toml"),
    (8, r"workers.profile must be a string, got 8"),
])
def test_a_bad_profile_is_refused_naming_the_key(value, message):
    with pytest.raises(ScenarioError, match=message):
        Scenario.from_dict({"workers": {"profile": value}})
