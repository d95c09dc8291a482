"""Iteration-level latency of one worker, from the coefficients in ``LatencyModel``.

Form and defaults follow shared/specs/anchors-workloads-models.md section 4 (the accepted
DistServe/Vidur/splitwise form, with the suggested Llama-3-8B-on-one-H100 coefficients, which
``LatencyModel``'s defaults already are):

- prefill of ``new`` uncached tokens after ``cached`` cached ones:
  ``max(5.6 ms, 20 us * new) + 1.32 ns * new * (cached + new / 2)``: linear GEMM work on the uncached
  tokens with the weight-read floor, plus attention over the whole context (a prefix hit removes
  tokens from ``new`` but not from the attention context). Section 4 puts a cold L-token prefill's
  attention at ~0.66 ns * L**2 (0.7 s at 32K); a cold prefill here is ``c * L**2 / 2``, hence
  ``c = 1.32 ns`` (types.py's default, doubled from the 0.66 ns it first had).
- one decode step: ``5.6 ms + 30 us * batch + 0.04 us * sum(context)`` (per-sequence overhead and
  the KV read of every running sequence's context).

Section 4 gives no per-sequence decode coefficient for the 8B/H100 case; the 30 us per sequence is
types.py's default, in line with splitwise-sim's H100 token steps (30.4 ms at batch 1 to 50.2 ms at
batch 64 for 70B/TP8, i.e. ~0.3 ms per sequence, scaled down ~10x for an 8B model).
"""

from __future__ import annotations

from .types import LatencyModel


def prefill_time(model: LatencyModel, new_tokens: int, cached_tokens: int) -> float:
    """Seconds to prefill ``new_tokens`` on top of ``cached_tokens`` already in the KV cache."""
    linear = model.prefill_per_token * new_tokens
    if linear < model.prefill_floor:
        linear = model.prefill_floor
    return linear + model.attention_per_token2 * new_tokens * (cached_tokens + new_tokens / 2)


def decode_step_time(model: LatencyModel, batch: int, context_tokens: float) -> float:
    """Seconds for one decode step of ``batch`` sequences holding ``context_tokens`` in total."""
    return model.decode_floor_at(batch) + model.decode_per_seq * batch + model.decode_per_ctx_token * context_tokens


def decode_time(model: LatencyModel, output_tokens: int, batch: int, context_tokens: float) -> float:
    """Seconds from the first to the last output token (the first comes out of the prefill)."""
    if output_tokens <= 1:
        return 0.0
    return (output_tokens - 1) * decode_step_time(model, batch, context_tokens)
