"""KV bytes per token and KV pool capacity from a model's shape and a GPU's memory, as SGLang sizes its pool.

Pure arithmetic from ``shared/specs/latency-profiles.md`` section 2. GQA/MHA: ``layers * kv_heads * head_dim * 2 *
dtype_bytes`` for the whole model; each TP rank holds ``max(1, kv_heads // tp)`` of the heads (SGLang's
``get_num_kv_heads``: heads are replicated once TP exceeds them). MLA: ``layers * (kv_lora_rank + qk_rope_head_dim)
* dtype_bytes``, one latent for K and V, replicated on every rank. SGLang's pool: ``max_total_num_tokens =
(free_after_weights - total * (1 - mem_fraction_static)) / cell_size``; with free memory taken as the GPU's, per
rank that is ``(mem_fraction_static * M - W / tp) / B_rank`` (activations come out of the reserve).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
ATTENTION_KINDS = ("gqa", "mla")


class CapacityError(ValueError):
    """A model that cannot be served as configured (its weights do not fit), or an unknown dtype/attention kind."""


@dataclass(frozen=True)
class ModelShape:
    """What KV sizing needs from a model's ``config.json``: its attention layout and its weight count."""

    layers: int
    attention: str = "gqa"  # "gqa" (also MHA: kv_heads = heads) or "mla"
    kv_heads: int = 0  # gqa
    head_dim: int = 0  # gqa
    kv_lora_rank: int = 0  # mla
    qk_rope_head_dim: int = 0  # mla
    params_billions: float = 0.0  # all weights, embeddings included (MoE: every expert)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise CapacityError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {self.attention!r}")
        if self.layers < 1:
            raise CapacityError(f"layers must be >= 1, got {self.layers}")
        needed = ("kv_heads", "head_dim") if self.attention == "gqa" else ("kv_lora_rank", "qk_rope_head_dim")
        for k in needed:
            if getattr(self, k) < 1:
                raise CapacityError(f"{self.attention} attention needs {k} >= 1, got {getattr(self, k)}")


def dtype_bytes(dtype: str) -> float:
    if dtype not in DTYPE_BYTES:
        raise CapacityError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    return DTYPE_BYTES[dtype]


def kv_bytes_per_token(shape: ModelShape, tp: int = 1, kv_dtype: str = "bf16") -> int:
    """KV bytes one token takes on one TP rank (the pool's cell size)."""
    if tp < 1:
        raise CapacityError(f"tp must be >= 1, got {tp}")
    size = dtype_bytes(kv_dtype)
    if shape.attention == "mla":
        return int(shape.layers * (shape.kv_lora_rank + shape.qk_rope_head_dim) * size)
    heads_per_rank = max(1, shape.kv_heads // tp)
    return int(shape.layers * heads_per_rank * shape.head_dim * 2 * size)


def weight_bytes(shape: ModelShape, weight_dtype: str = "bf16") -> float:
    return shape.params_billions * 1e9 * dtype_bytes(weight_dtype)


def kv_capacity_tokens(bytes_per_token: int, gpu_memory_gib: float, weights: float, tp: int = 1,
                       mem_fraction_static: float = 0.9) -> int:
    """Tokens the KV pool of one worker (``tp`` GPUs) holds: ``(mem_fraction_static * M - W / tp) / B_rank``.

    ``weights`` is the whole model's weight bytes (spread evenly over the ranks); CapacityError names the numbers
    when they leave no room for KV.
    """
    if not 0 < mem_fraction_static <= 1:
        raise CapacityError(f"mem_fraction_static must be within (0, 1], got {mem_fraction_static}")
    static = mem_fraction_static * gpu_memory_gib * GIB
    per_rank = weights / tp
    free = static - per_rank
    if free <= 0:
        raise CapacityError(
            f"the weights do not fit: {per_rank / GIB:.1f} GiB per GPU ({weights / GIB:.1f} GiB over tp={tp}) "
            f"exceed mem_fraction_static {mem_fraction_static} x {gpu_memory_gib:g} GiB = {static / GIB:.1f} GiB")
    return int(free // bytes_per_token)
