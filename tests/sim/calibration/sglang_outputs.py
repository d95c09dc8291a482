"""SGLang's measurement outputs as a worker with a known ``LatencyModel`` would produce them, with seeded noise.

Formats as ``sim.calibration.sources`` cites them (sglang 0.5.23); every time is multiplied by ``1 + noise * N(0, 1)``.
"""

from __future__ import annotations

import json
import random

from sim.engine.latency import decode_step_time
from sim.engine.types import LatencyModel

LOG_PREFIX = "[2026-12-06 05:00:00 TP0] "


def batch_prefill_seconds(model: LatencyModel, seqs: int, new: int, cached: int) -> float:
    """One forward prefilling ``seqs`` sequences of ``new`` tokens after ``cached``: ``latency.py``'s form."""
    linear = max(model.prefill_floor, model.prefill_per_token * seqs * new)
    return linear + model.attention_per_token2 * seqs * new * (cached + new / 2)


def _jitter(rng: random.Random, noise: float) -> float:
    return 1 + noise * rng.gauss(0, 1)


def bench_one_batch_lines(
    model: LatencyModel,
    runs: list[tuple[int, int, int]],
    noise: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """One JSON line per ``(batch_size, input_len, output_len)`` run, as ``--result-filename`` appends them."""
    rng = random.Random(seed)
    lines = []
    for batch, input_len, output_len in runs:
        prefill = batch_prefill_seconds(model, batch, input_len, 0) * _jitter(rng, noise)
        record = {
            "run_name": "calibrate",
            "batch_size": batch,
            "input_len": input_len,
            "output_len": output_len,
            "prefill_latency": prefill,
            "prefill_throughput": input_len * batch / prefill,
        }
        if output_len > 1:
            step = decode_step_time(model, batch, batch * (input_len + output_len / 2)) * _jitter(rng, noise)
            record |= {"median_decode_latency": step, "median_decode_throughput": batch / step}
        lines.append(json.dumps(record))
    return lines


def bench_serving_lines(
    model: LatencyModel,
    runs: list[tuple[int, int, int]],
    noise: float = 0.0,
    seed: int = 0,
    completed: int = 200,
) -> list[str]:
    """One JSON line per ``(max_concurrency, input_len, output_len)`` run, as ``--output-file`` appends them.

    A steady worker: TTFT is the cold prefill (concurrency 1 only: queueing is not modelled), TPOT a decode step of
    ``max_concurrency`` sequences at their mean context.
    """
    rng = random.Random(seed)
    lines = []
    for concurrency, input_len, output_len in runs:
        ttft = batch_prefill_seconds(model, 1, input_len, 0) * _jitter(rng, noise)
        tpot = decode_step_time(model, concurrency, concurrency * (input_len + output_len / 2)) * _jitter(rng, noise)
        record = {
            "backend": "sglang",
            "dataset_name": "random",
            "request_rate": float("inf"),
            "max_concurrency": concurrency,
            "random_input_len": input_len,
            "random_output_len": output_len,
            "random_range_ratio": 1.0,
            "completed": completed,
            "total_input_tokens": input_len * completed,
            "total_output_tokens": output_len * completed,
            "mean_ttft_ms": ttft * 1000,
            "median_ttft_ms": ttft * 1000,
            "mean_tpot_ms": tpot * 1000,
            "median_tpot_ms": tpot * 1000,
        }
        lines.append(json.dumps(record))
    return lines


def prefill_log_line(new: int, cached: int, seqs: int = 1) -> str:
    return (
        f"{LOG_PREFIX}Prefill batch, #new-seq: {seqs}, #new-token: {new}, #cached-token: {cached}, "
        f"token usage: 0.05, #running-req: 0, #queue-req: 0, #pending-token: 0, cuda graph: False, "
        f"input throughput (token/s): 0.00"
    )


def decode_log_line(batch: int, tokens: int, throughput: float) -> str:
    return (
        f"{LOG_PREFIX}Decode batch, #running-req: {batch}, #token: {tokens}, token usage: 0.12, cuda graph: True, "
        f"gen throughput (token/s): {throughput:.2f}, #queue-req: 0"
    )


def worker_log(
    model: LatencyModel,
    prefills: list[tuple[int, int]],
    decodes: list[tuple[int, int]],
    noise: float = 0.0,
    seed: int = 0,
) -> tuple[list[str], list[float]]:
    """Log lines for ``(new, cached)`` single-request prefills and ``(batch, tokens)`` decode windows, and the TTFTs."""
    rng = random.Random(seed)
    lines, ttfts = [], []
    for new, cached in prefills:
        lines.append(prefill_log_line(new, cached))
        ttfts.append(batch_prefill_seconds(model, 1, new, cached) * _jitter(rng, noise))
    for batch, tokens in decodes:
        step = decode_step_time(model, batch, tokens) * _jitter(rng, noise)
        lines.append(decode_log_line(batch, tokens, batch / step))
    return lines, ttfts
