"""The shipped profiles: the issue's list, named after model, GPU and TP, each loadable and sourced."""

from __future__ import annotations

import pytest

from sim.profiles.catalog import load_profile, shipped_names
from sim.profiles.profile import ProfileError

ISSUE_LIST = ("llama-3.1-8b-h100-tp1", "llama-3.1-8b-h200-tp1", "qwen3-8b-h100-tp1", "qwen3-32b-h100-tp2",
              "qwen3-32b-h200-tp1", "llama-3.1-70b-h100-tp4", "llama-3.1-70b-h100-tp8", "qwen3-30b-a3b-h200-tp1",
              "glm-4.7-flash-h100-tp1", "glm-4.7-flash-h200-tp1", "deepseek-v3-h200-tp8-fp8")


def test_the_issue_list_ships():
    assert set(ISSUE_LIST) <= set(shipped_names())


@pytest.mark.parametrize("name", shipped_names())
def test_each_shipped_profile_loads_is_named_after_model_gpu_tp_and_says_where_it_comes_from(name):
    p = load_profile(name)
    assert p.name == name == name.lower()
    assert name.startswith(f"{p.model.split('/')[1].lower().removesuffix('-instruct')}-{p.gpu.split('-')[0].lower()}"
                           f"-tp{p.tp}")
    assert name.endswith("-fp8") == (p.dtype == "fp8")
    assert p.basis in ("[V]", "[D]", "[I]", "[D/I]")
    assert p.provenance.source and p.provenance.derivation and p.provenance.date
    assert p.kv_capacity_tokens > 10_000 and p.shape is not None
    assert (p.experts > 0) == any(k in name for k in ("a3b", "glm", "deepseek"))


def test_the_8b_h100_profile_carries_the_spec_row():
    p = load_profile("llama-3.1-8b-h100-tp1")
    assert (p.kv_bytes_per_token, p.prefill_floor, p.prefill_per_token, p.attention_per_token2) == \
        (131_072, 5.9e-3, 21.3e-6, 1.31e-9)
    assert p.kv_capacity_tokens == pytest.approx(467_000, rel=0.002)


def test_a_small_model_on_h200_holds_an_order_of_magnitude_more_kv_than_a_32b_model_on_h100_at_tp1():
    small = load_profile("llama-3.1-8b-h200-tp1").kv_capacity_tokens
    assert small > 3 * load_profile("qwen3-32b-h200-tp1").kv_capacity_tokens


def test_a_path_loads_and_an_unknown_name_suggests_one(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(load_profile("qwen3-8b-h100-tp1").to_toml())
    assert load_profile(str(f)) == load_profile("qwen3-8b-h100-tp1")
    with pytest.raises(ProfileError, match=r"unknown profile 'qwen3-8b-h100' \(did you mean 'qwen3-8b-h100-tp1'\?\)"):
        load_profile("qwen3-8b-h100")
