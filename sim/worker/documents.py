"""A mock worker's registration documents: what SMG reads to register it (``/v1/models``, ``/server_info``,
``/model_info``), in SGLang's shapes; constant for a worker."""

from __future__ import annotations

from typing import Any

from sim.engine.types import HiCacheConfig, WorkerConfig


def models(model_name: str, context_length: int) -> dict[str, Any]:
    """``GET /v1/models``: the one served model (``owned_by: "sglang"``)."""
    return {
        "object": "list",
        "data": [
            {
                "id": model_name,
                "object": "model",
                "created": 0,
                "owned_by": "sglang",
                "root": model_name,
                "max_model_len": context_length,
            }
        ],
    }


def server_info(config: WorkerConfig, model_name: str, context_length: int) -> dict[str, Any]:
    """``GET /server_info``: a single-GPU SGLang server, marked ``mock``; ``disaggregation_mode`` is SGLang's flag
    ("null" when co-located, as SGLang writes it), and so are the HiCache server args (``hicache_storage_backend``
    null without an L3; the mock's one backend is the pool's shared store)."""
    cap = config.kv_capacity_tokens
    hc = config.hicache
    return {
        "model_path": model_name,
        "served_model_name": model_name,
        "tokenizer_path": model_name,
        "tp_size": 1,
        "dp_size": 1,
        "pp_size": 1,
        "load_balance_method": "round_robin",
        "disaggregation_mode": config.disaggregation_mode or "null",
        "version": "0.0.0-mock",
        "is_embedding": False,
        "context_length": context_length,
        "max_total_tokens": int(cap) if cap is not None else 0,
        "max_running_requests": config.max_running_requests,
        "page_size": config.page_size,
        "enable_hierarchical_cache": hc is not None,
        "hicache_ratio": hc.ratio if hc is not None else HiCacheConfig.ratio,
        "hicache_size": hc.size_gb if hc is not None else HiCacheConfig.size_gb,
        "hicache_write_policy": hc.write_policy if hc is not None else HiCacheConfig.write_policy,
        "hicache_storage_backend": "mock" if hc is not None and hc.storage else None,
        "hicache_storage_prefetch_policy": hc.prefetch_policy if hc is not None else HiCacheConfig.prefetch_policy,
        "disaggregation_decode_enable_offload_kvcache": hc is not None and hc.decode_offload,
        "weight_version": "default",
        "worker_name": config.name,
        "mock": True,
    }


def model_info(model_name: str) -> dict[str, Any]:
    """``GET /model_info``: a generation model."""
    return {
        "model_path": model_name,
        "tokenizer_path": model_name,
        "is_generation": True,
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "weight_version": "default",
    }
