"""KV bytes per token and pool capacity from a model's shape: the worked numbers of
shared/specs/latency-profiles.md sections 2 and 3."""

from __future__ import annotations

import pytest

from sim.profiles.capacity import CapacityError, ModelShape, kv_bytes_per_token, kv_capacity_tokens, weight_bytes

LLAMA_8B = ModelShape(layers=32, attention="gqa", kv_heads=8, head_dim=128, params_billions=8.03)
LLAMA_70B = ModelShape(layers=80, attention="gqa", kv_heads=8, head_dim=128, params_billions=70.6)
GLM_FLASH = ModelShape(layers=47, attention="mla", kv_lora_rank=512, qk_rope_head_dim=64, params_billions=31.2)


def test_gqa_bytes_per_token_is_layers_heads_dim_k_and_v_dtype():
    assert kv_bytes_per_token(LLAMA_8B) == 32 * 8 * 128 * 2 * 2 == 131_072


def test_mla_bytes_per_token_is_one_latent_per_layer():
    assert kv_bytes_per_token(GLM_FLASH) == 47 * (512 + 64) * 2 == 54_144


@pytest.mark.parametrize(("shape", "expected"), [
    (ModelShape(36, "gqa", 8, 128), 147_456),  # Qwen3-8B
    (ModelShape(64, "gqa", 8, 128), 262_144),  # Qwen3-32B
    (LLAMA_70B, 327_680),
    (ModelShape(48, "gqa", 4, 128), 98_304),  # Qwen3-30B-A3B
    (ModelShape(61, "mla", kv_lora_rank=512, qk_rope_head_dim=64), 70_272),  # DeepSeek-V3
])
def test_the_spec_table_kv_bytes_column(shape, expected):
    assert kv_bytes_per_token(shape) == expected


def test_gqa_heads_split_over_tp_ranks_until_replicated():
    assert kv_bytes_per_token(LLAMA_70B, tp=4) == 327_680 // 4
    assert kv_bytes_per_token(LLAMA_70B, tp=8) == 327_680 // 8
    assert kv_bytes_per_token(LLAMA_70B, tp=16) == 327_680 // 8  # one head per rank, replicated


def test_mla_latent_is_replicated_on_every_rank():
    assert kv_bytes_per_token(GLM_FLASH, tp=8) == 54_144


def test_fp8_kv_halves_the_bytes():
    assert kv_bytes_per_token(LLAMA_8B, kv_dtype="fp8") == 65_536
    assert kv_bytes_per_token(GLM_FLASH, kv_dtype="fp8") == 54_144 // 2


@pytest.mark.parametrize(("shape", "gpu_gib", "tp", "spec_tokens"), [
    (LLAMA_8B, 80, 1, 467_000),
    (LLAMA_8B, 141, 1, 917_000),
    (ModelShape(64, "gqa", 8, 128, params_billions=32.8), 80, 2, 340_000),
    (ModelShape(64, "gqa", 8, 128, params_billions=32.8), 141, 1, 270_000),
    (LLAMA_70B, 80, 4, 513_000),
    (LLAMA_70B, 80, 8, 1_460_000),
    (ModelShape(48, "gqa", 4, 128, params_billions=30.5), 141, 1, 766_000),
    (GLM_FLASH, 80, 1, 275_000),
    (GLM_FLASH, 141, 1, 1_360_000),
])
def test_capacity_at_mem_fraction_0_9_matches_the_spec_column(shape, gpu_gib, tp, spec_tokens):
    tokens = kv_capacity_tokens(kv_bytes_per_token(shape, tp), gpu_gib, weight_bytes(shape), tp)
    assert tokens == pytest.approx(spec_tokens, rel=0.005)


def test_capacity_is_sglang_static_memory_less_weights_per_rank_over_the_cell():
    tokens = kv_capacity_tokens(131_072, 80, 16.06e9, tp=1, mem_fraction_static=0.9)
    assert tokens == int((0.9 * 80 * 2**30 - 16.06e9) // 131_072)


def test_fp8_kv_doubles_the_capacity():
    bf16 = kv_capacity_tokens(kv_bytes_per_token(LLAMA_8B), 80, weight_bytes(LLAMA_8B))
    fp8 = kv_capacity_tokens(kv_bytes_per_token(LLAMA_8B, kv_dtype="fp8"), 80, weight_bytes(LLAMA_8B))
    assert fp8 in (2 * bf16, 2 * bf16 + 1)


def test_weights_that_do_not_fit_are_an_error_naming_the_numbers():
    shape = ModelShape(64, "gqa", 8, 128, params_billions=32.8)
    with pytest.raises(CapacityError, match=r"61\.1 GiB per GPU .*tp=1.* 0\.5 x 80 GiB = 40\.0 GiB"):
        kv_capacity_tokens(kv_bytes_per_token(shape), 80, weight_bytes(shape), tp=1, mem_fraction_static=0.5)


def test_an_incomplete_shape_or_unknown_dtype_is_refused():
    with pytest.raises(CapacityError, match="mla attention needs kv_lora_rank"):
        ModelShape(layers=47, attention="mla")
    with pytest.raises(CapacityError, match="attention must be one of gqa, mla"):
        ModelShape(layers=2, attention="mha", kv_heads=1, head_dim=1)
    with pytest.raises(CapacityError, match="unknown dtype 'int3'"):
        kv_bytes_per_token(LLAMA_8B, kv_dtype="int3")
