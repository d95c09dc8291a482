"""A profile as TOML: what it holds, how it round-trips, and the errors that name the file and the key."""

from __future__ import annotations

import tomllib

import pytest

from sim.engine.types import LatencyModel, SchedulerConfig
from sim.profiles.profile import Profile, ProfileError, Provenance, profile_from_dict, profile_from_toml, read_profile

MINIMAL = """
name = "toy-h100-tp1"
model = "org/Toy"
gpu = "H100-SXM"
gpu_memory_gib = 80
tp = 1
engine = "sglang@0.5"
dtype = "bf16"

[latency]
prefill_floor = 0.006
prefill_per_token = 2.1e-5
attention_per_token2 = 1.3e-9
decode_floor = 0.007
decode_per_seq = 2e-5
decode_per_ctx_token = 7e-8
request_overhead = 0.015

[shape]
layers = 32
attention = "gqa"
kv_heads = 8
head_dim = 128
params_billions = 8.03

[provenance]
source = "a test"
date = "2026-12-06"
derivation = "typed in"
basis = "D/I"
"""


def data(**changes: dict) -> dict:
    d = tomllib.loads(MINIMAL)
    for table, values in changes.items():
        d[table] = {**d.get(table, {}), **values} if isinstance(values, dict) else values
    return d


def test_a_profile_derives_its_kv_from_the_shape_and_gives_a_latency_model():
    p = profile_from_toml(MINIMAL, "toy.toml")
    assert (p.kv_bytes_per_token, p.kv_capacity_tokens) == (131_072, 467_295)
    assert p.latency_model() == LatencyModel(prefill_floor=0.006, prefill_per_token=2.1e-5,
                                             attention_per_token2=1.3e-9, decode_floor=0.007, decode_per_seq=2e-5,
                                             decode_per_ctx_token=7e-8)
    assert p.request_overhead == 0.015 and p.basis == "[D/I]"
    assert p.scheduler_config() == SchedulerConfig()  # SGLang's chunking defaults when [scheduler] is absent


def test_a_moe_profile_gives_the_distinct_experts_decode_floor_and_a_dense_one_none():
    moe = profile_from_dict(data(moe={"experts": 64, "experts_per_token": 4, "decode_floor_all_experts": 0.026}))
    lat = moe.latency_model()
    assert (lat.moe_experts, lat.moe_experts_per_token, lat.decode_floor_all_experts) == (64, 4, 0.026)
    assert lat.decode_floor_at(1) == moe.decode_floor < lat.decode_floor_at(16) < 0.026
    no_top = profile_from_dict(data(moe={"experts": 64, "experts_per_token": 4})).latency_model()
    assert no_top.decode_floor_at(64) == no_top.decode_floor  # carried, but no floor to grow to


def test_given_kv_numbers_win_over_the_derived_ones():
    p = profile_from_dict(data(kv={"bytes_per_token": 65_536, "capacity_tokens": 123_456}))
    assert (p.kv_bytes_per_token, p.kv_capacity_tokens) == (65_536, 123_456)


def test_fp8_kv_dtype_halves_the_bytes_and_doubles_the_capacity():
    p = profile_from_dict({**data(), "kv_dtype": "fp8"})
    assert p.kv_bytes_per_token == 65_536 and p.kv_capacity_tokens in (2 * 467_295, 2 * 467_295 + 1)


def test_chunked_prefill_minus_one_disables_chunking_as_sglang_does():
    p = profile_from_dict(data(scheduler={"chunked_prefill_size": -1, "max_prefill_tokens": 4096}))
    assert p.scheduler_config() == SchedulerConfig(chunked_prefill_size=None, max_prefill_tokens=4096)


@pytest.mark.parametrize("changes", [
    {},
    {"kv": {"capacity_tokens": 1000}},
    {"kv": {"bytes_per_token": 1000, "capacity_tokens": 1000}, "shape": None},
    {"moe": {"experts": 64, "experts_per_token": 4}, "scheduler": {"chunked_prefill_size": -1}},
    {"moe": {"experts": 64, "experts_per_token": 4, "decode_floor_all_experts": 0.026}},
    {"provenance": {"residuals": {"decode_floor": 0.03, "prefill_per_token": -0.01}}},
])
def test_to_toml_round_trips(changes):
    d = data(**{k: v for k, v in changes.items() if v is not None})
    if changes.get("shape", 1) is None:
        del d["shape"]
    p = profile_from_dict(d)
    assert profile_from_toml(p.to_toml(), "dumped") == p


def test_to_toml_leaves_out_the_kv_numbers_the_shape_derives():
    text = profile_from_toml(MINIMAL).to_toml()
    assert "[shape]" in text and "capacity_tokens" not in text and "bytes_per_token" not in text


def test_read_profile_reads_a_file(tmp_path):
    f = tmp_path / "toy.toml"
    f.write_text(MINIMAL)
    assert read_profile(f) == profile_from_toml(MINIMAL)
    with pytest.raises(ProfileError, match=r"profile file not found: .*nope\.toml"):
        read_profile(tmp_path / "nope.toml")


@pytest.mark.parametrize(("changes", "message"), [
    ({"latency": {"prefil_floor": 0.1}},
     r"toy.toml: latency.prefil_floor: unknown key \(did you mean 'prefill_floor'\?\)"),
    ({"gpu_memory_gb": 80}, r"toy.toml: gpu_memory_gb: unknown key \(did you mean 'gpu_memory_gib'\?\)"),
    ({"laytency": {"x": 1}}, r"toy.toml: unknown table \[laytency\] \(did you mean 'latency'\?\)"),
    ({"tp": "1"}, r"toy.toml: tp must be an integer, got '1'"),
    ({"latency": {"decode_floor": "fast"}}, r"toy.toml: latency.decode_floor must be a number, got 'fast'"),
    ({"latency": {"decode_floor": True}}, r"toy.toml: latency.decode_floor must be a number, got True"),
    ({"latency": {"decode_floor": -1.0}}, r"toy.toml: latency.decode_floor must be >= 0"),
    ({"provenance": {"basis": "X"}}, r"toy.toml: provenance.basis must be V, D, I or a mix like D/I, got 'X'"),
    ({"moe": {"experts": 4, "experts_per_token": 8}}, r"toy.toml: moe.experts_per_token must be within \[1, moe"),
    ({"moe": {"experts": 4, "experts_per_token": 1, "decode_floor_all_experts": -0.1}},
     r"toy.toml: moe.decode_floor_all_experts must be >= 0"),
    ({"shape": {"attention": "mla"}}, r"toy.toml: mla attention needs kv_lora_rank >= 1"),
    ({"shape": {"params_billions": 80.0}}, r"toy.toml: the weights do not fit: 149.0 GiB per GPU"),
    ({"tp": 0}, r"toy.toml: tp must be >= 1"),
])
def test_errors_name_the_file_and_the_key(changes, message):
    d = data(**{k: v for k, v in changes.items() if isinstance(v, dict)})
    d.update({k: v for k, v in changes.items() if not isinstance(v, dict)})
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(d, "toy.toml")


def test_missing_keys_and_tables_are_named():
    d = data()
    del d["latency"]["decode_floor"], d["gpu"]
    with pytest.raises(ProfileError, match=r"toy.toml: missing gpu"):
        profile_from_dict(d, "toy.toml")
    d = data()
    del d["latency"]["decode_floor"]
    with pytest.raises(ProfileError, match=r"toy.toml: missing latency.decode_floor"):
        profile_from_dict(d, "toy.toml")
    d = data()
    del d["provenance"]
    with pytest.raises(ProfileError, match=r"toy.toml: missing table \[provenance\]"):
        profile_from_dict(d, "toy.toml")
    d = data()
    del d["shape"]
    with pytest.raises(ProfileError, match=r"toy.toml: missing kv.bytes_per_token \(or a \[shape\] table"):
        profile_from_dict(d, "toy.toml")


def test_a_toml_syntax_error_names_the_file():
    with pytest.raises(ProfileError, match=r"broken\.toml: "):
        profile_from_toml("name = ", "broken.toml")


def test_provenance_defaults_to_no_residuals():
    assert Provenance("s", "d", "how", "V").residuals == {}
    assert isinstance(profile_from_toml(MINIMAL), Profile)
