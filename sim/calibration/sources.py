"""Parsers of SGLang's measurement outputs (formats as in sglang 0.5.23's source) into timed points.

Every parser takes the source's lines and returns ``Measurements``; a line that does not parse is skipped and
counted (``malformed`` when it is of the source's kind, ``foreign`` otherwise), never raised. An input with no
non-blank line raises ``EmptyInputError``.

- ``bench_one_batch`` (``sglang/benchmark/one_batch.py``, ``latency_test_run_once``; ``--result-filename``
  appends one JSON object per run): ``batch_size``, ``input_len``, ``output_len``, ``prefill_latency`` (s) and,
  when ``output_len > 1``, ``median_decode_latency`` (s, the median over decode steps ``0 .. output_len - 2``).
- ``bench_serving`` (``sglang/benchmark/serving.py``, end of ``benchmark``; ``--output-file`` appends one JSON
  object per run): ``completed``, ``total_input_tokens``, ``total_output_tokens``, ``max_concurrency``,
  ``median_ttft_ms``, ``median_tpot_ms``.
- the worker log (``sglang/srt/managers/scheduler_components/metrics_reporter.py``: ``report_prefill_stats`` and
  ``report_decode_stats``; the token parts from ``pool_stats_observer.py``): ``Prefill batch, #new-seq: N,
  #new-token: T, #cached-token: C, ...`` and ``Decode batch, #running-req: B, #token: T, ... gen throughput
  (token/s): G, ...``. Decode lines of hybrid (SWA/SSM) pools log ``#full token`` instead of ``#token`` and
  speculative decoding adds ``accept len``; neither fits the plain decode form, so both count as foreign.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from .points import DecodePoint, Measurements, PrefillPoint


class EmptyInputError(ValueError):
    """A source with nothing in it: no non-blank line."""


def _non_blank(lines: Iterable[str], source: str) -> list[str]:
    kept = [line for line in lines if line.strip()]
    if not kept:
        raise EmptyInputError(f"{source}: the input is empty (no non-blank line)")
    return kept


def _json_records(lines: list[str], required: tuple[str, ...]) -> tuple[list[dict], int, int]:
    """The lines' JSON objects that hold every ``required`` key, and the malformed and foreign counts."""
    records, malformed, foreign = [], 0, 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            malformed += 1
            continue
        if not isinstance(record, dict) or not all(k in record for k in required):
            foreign += 1
            continue
        records.append(record)
    return records, malformed, foreign


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def parse_bench_one_batch(lines: Iterable[str]) -> Measurements:
    """``bench_one_batch`` results: one prefill point per run, and one decode point per run with decode steps.

    A run prefills ``batch_size`` cold prompts of ``input_len`` tokens in one forward. Decode step ``i`` runs
    with ``input_len + 1 + i`` tokens per sequence, so the median step (``i = (output_len - 2) / 2``) holds
    ``batch_size * (input_len + output_len / 2)`` context tokens (the step time is linear in the context).
    """
    records, malformed, foreign = _json_records(
        _non_blank(lines, "bench_one_batch"), ("batch_size", "input_len", "output_len", "prefill_latency")
    )
    prefill, decode = [], []
    for r in records:
        batch, input_len, output_len = r["batch_size"], r["input_len"], r["output_len"]
        if not all(isinstance(v, int) and v > 0 for v in (batch, input_len, output_len)) or not _positive(
            r["prefill_latency"]
        ):
            malformed += 1
            continue
        prefill.append(PrefillPoint(batch, input_len, 0, float(r["prefill_latency"])))
        step = r.get("median_decode_latency")
        if output_len > 1 and _positive(step):
            decode.append(DecodePoint(batch, batch * (input_len + output_len / 2), float(step)))
    return Measurements(tuple(prefill), tuple(decode), malformed, foreign)


def parse_bench_serving(lines: Iterable[str]) -> Measurements:
    """``bench_serving`` results, read as a worker in steady state at ``max_concurrency``.

    Each run gives a decode point: ``max_concurrency`` sequences at their mean input length plus half their mean
    output length, stepping every median TPOT. A run at concurrency 1 also gives a cold prefill point of the
    mean input length taking the median TTFT (which includes the per-request overhead, so use short prompts
    sparingly). TPOT at higher concurrency includes the stalls of interleaved prefills: an approximation, best
    used with long outputs. Runs without ``max_concurrency`` (open-loop request rates) are foreign.
    """
    records, malformed, foreign = _json_records(
        _non_blank(lines, "bench_serving"),
        ("completed", "total_input_tokens", "total_output_tokens", "median_ttft_ms", "median_tpot_ms"),
    )
    prefill, decode = [], []
    for r in records:
        concurrency = r.get("max_concurrency")
        if concurrency is None:
            foreign += 1
            continue
        fields = (r["completed"], r["total_input_tokens"], r["total_output_tokens"], r["median_ttft_ms"])
        if not (isinstance(concurrency, int) and concurrency > 0 and all(_positive(v) for v in fields)):
            malformed += 1
            continue
        mean_input = r["total_input_tokens"] / r["completed"]
        mean_output = r["total_output_tokens"] / r["completed"]
        if concurrency == 1:
            prefill.append(PrefillPoint(1, round(mean_input), 0, r["median_ttft_ms"] / 1000))
        if _positive(r["median_tpot_ms"]):
            context = concurrency * (mean_input + mean_output / 2)
            decode.append(DecodePoint(concurrency, context, r["median_tpot_ms"] / 1000))
    return Measurements(tuple(prefill), tuple(decode), malformed, foreign)


_PREFILL_LINE = re.compile(r"Prefill batch(?: \[\d+\])?, #new-seq: (\d+), #new-token: (\d+), #cached-token: (\d+),")
_DECODE_LINE = re.compile(
    r"Decode batch(?: \[\d+\])?, #running-req: (\d+), #token: (\d+), token usage: [\d.]+, .*"
    r"gen throughput \(token/s\): ([\d.]+)"
)
_SPECULATIVE = "accept len:"


def parse_worker_log(lines: Iterable[str], ttfts: Sequence[float] | None = None) -> Measurements:
    """A worker log's batch lines: decode points from ``Decode batch`` lines, prefill points given ``ttfts``.

    A decode line averages the steps since the previous one (``--decode-log-interval``, default 40): a step took
    ``B / G`` seconds with ``T`` tokens in the pool (about the running sequences' context). A prefill line
    carries no duration; ``ttfts`` (seconds, measured by the client, in the order the requests were sent one
    at a time, spec section 5 step 3) times its single-sequence prefill lines in order, and must match their
    number; a non-positive TTFT counts its line as malformed. Prompts longer than ``--chunked-prefill-size`` log
    one line per chunk: keep them within it.
    """
    prefills: list[tuple[int, int]] = []
    decode: list[DecodePoint] = []
    malformed = foreign = 0
    for line in _non_blank(lines, "worker log"):
        if "Prefill batch" in line:
            match = _PREFILL_LINE.search(line)
            if match is None:
                malformed += 1
            elif int(match[1]) != 1 or int(match[2]) == 0:
                foreign += 1  # several sequences (no per-sequence split) or a fully cached prompt
            else:
                prefills.append((int(match[2]), int(match[3])))
        elif "Decode batch" in line:
            if "#full token:" in line or _SPECULATIVE in line:
                foreign += 1
                continue
            match = _DECODE_LINE.search(line)
            if match is None:
                malformed += 1
                continue
            batch, tokens, throughput = int(match[1]), int(match[2]), float(match[3])
            if batch == 0 or throughput <= 0:
                malformed += 1
                continue
            decode.append(DecodePoint(batch, float(tokens), batch / throughput))
        else:
            foreign += 1
    prefill: list[PrefillPoint] = []
    if ttfts is not None:
        if len(ttfts) != len(prefills):
            raise ValueError(f"worker log: {len(prefills)} single-sequence prefill lines but {len(ttfts)} TTFTs")
        for (new, cached), seconds in zip(prefills, ttfts, strict=True):
            if seconds > 0:
                prefill.append(PrefillPoint(1, new, cached, seconds))
            else:
                malformed += 1  # a failed or unmeasured request
    return Measurements(tuple(prefill), tuple(decode), malformed, foreign)
