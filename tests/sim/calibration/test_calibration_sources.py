"""Reading SGLang's outputs: the points each format gives, lines that do not parse skipped with a count, never raised,
and an empty input a clear error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sglang_outputs import LOG_PREFIX, bench_one_batch_lines, bench_serving_lines, decode_log_line, prefill_log_line

from sim.calibration.points import DecodePoint, PrefillPoint
from sim.calibration.sources import EmptyInputError, parse_bench_one_batch, parse_bench_serving, parse_worker_log
from sim.engine.types import LatencyModel

PARSERS = [parse_bench_one_batch, parse_bench_serving, parse_worker_log]


def test_a_bench_one_batch_run_gives_its_cold_prefill_and_its_median_decode_step():
    record = {"batch_size": 4, "input_len": 1000, "output_len": 32, "prefill_latency": 0.2}
    one_step = {**record, "output_len": 1}
    got = parse_bench_one_batch([json.dumps({**record, "median_decode_latency": 0.01}), json.dumps(one_step)])
    assert got.prefill == (PrefillPoint(4, 1000, 0, 0.2), PrefillPoint(4, 1000, 0, 0.2))
    assert got.decode == (DecodePoint(4, 4 * (1000 + 16), 0.01),)  # decode steps hold input + 1 .. input + 31 tokens
    assert got.skipped == 0


def test_a_bench_serving_run_gives_a_decode_step_and_at_concurrency_one_a_cold_prefill():
    model = LatencyModel()
    got = parse_bench_serving(bench_serving_lines(model, [(1, 2000, 100), (8, 2000, 100)], completed=10))
    assert [(p.seqs, p.new_tokens, p.cached_tokens) for p in got.prefill] == [(1, 2000, 0)]
    assert [(d.batch, d.context_tokens) for d in got.decode] == [(1, 2050.0), (8, 8 * 2050.0)]


def test_worker_log_decode_lines_give_the_step_time_from_the_generation_throughput():
    got = parse_worker_log([decode_log_line(batch=32, tokens=64_000, throughput=3200.0)])
    assert got.decode == (DecodePoint(32, 64_000.0, 0.01),)


def test_worker_log_prefill_lines_are_timed_in_order_by_the_clients_ttfts():
    lines = [prefill_log_line(1024, 0), decode_log_line(1, 1100, 100.0), prefill_log_line(256, 4096)]
    got = parse_worker_log(lines, ttfts=[0.03, 0.02])
    assert got.prefill == (PrefillPoint(1, 1024, 0, 0.03), PrefillPoint(1, 256, 4096, 0.02))
    assert parse_worker_log(lines).prefill == ()  # untimed: a prefill line carries no duration
    with pytest.raises(ValueError, match="2 single-sequence prefill lines but 1 TTFTs"):
        parse_worker_log(lines, ttfts=[0.03])


def test_worker_log_lines_of_the_batch_iteration_form_parse_too():
    line = prefill_log_line(512, 0).replace("Prefill batch,", "Prefill batch [1234],")
    assert parse_worker_log([line], ttfts=[0.02]).prefill == (PrefillPoint(1, 512, 0, 0.02),)


def test_malformed_and_foreign_worker_log_lines_are_skipped_with_a_count():
    lines = [
        f"{LOG_PREFIX}Load weight end. type=LlamaForCausalLM, dtype=torch.bfloat16, avail mem=63.87 GB",
        'INFO:     127.0.0.1:51234 - "POST /generate HTTP/1.1" 200 OK',
        f"{LOG_PREFIX}Decode batch, #running-req: 3, #token: ",  # truncated
        f"{LOG_PREFIX}Prefill batch, #new-seq: x, #new-token: 10",  # garbled
        decode_log_line(4, 4000, 0.0),  # no throughput yet
        prefill_log_line(4096, 0, seqs=2),  # no per-sequence split
        prefill_log_line(0, 4096),  # a fully cached prompt: no prefill forward to time
        decode_log_line(4, 4000, 400.0).replace("#token: 4000", "#full token: 4000"),  # a hybrid (SWA) pool
        decode_log_line(4, 4000, 400.0).replace("cuda graph", "accept len: 2.50, cuda graph"),  # speculative
        prefill_log_line(128, 0),
        decode_log_line(4, 4000, 400.0),
    ]
    got = parse_worker_log(lines, ttfts=[-1.0])  # the one timed request failed
    assert (got.prefill, got.decode) == ((), (DecodePoint(4, 4000.0, 0.01),))
    assert (got.malformed, got.foreign) == (4, 6)


def test_malformed_and_foreign_result_records_are_skipped_with_a_count():
    good = bench_one_batch_lines(LatencyModel(), [(1, 512, 2)])
    lines = [
        *good,
        '{"batch_size": 1, "input_len": 512',  # truncated JSON
        json.dumps({"batch_size": 1, "input_len": 512, "output_len": 2, "prefill_latency": "fast"}),
        json.dumps({"batch_size": 0, "input_len": 512, "output_len": 2, "prefill_latency": 0.01}),
        json.dumps({"mean_ttft_ms": 12.0}),  # another tool's record
        "[1, 2, 3]",
    ]
    got = parse_bench_one_batch(lines)
    assert (len(got.prefill), got.malformed, got.foreign) == (1, 3, 2)

    serving = bench_serving_lines(LatencyModel(), [(4, 512, 64)])
    open_loop = json.loads(serving[0]) | {"max_concurrency": None}
    failed = json.loads(serving[0]) | {"completed": 0}
    got = parse_bench_serving([*serving, json.dumps(open_loop), json.dumps(failed), *good])
    assert (len(got.decode), got.malformed, got.foreign) == (1, 1, 2)


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_input_is_a_clear_error(parse, text):
    with pytest.raises(EmptyInputError, match="the input is empty"):
        parse(text.splitlines())


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.text(max_size=200), min_size=1, max_size=20).filter(lambda ls: any(s.strip() for s in ls)))
@pytest.mark.parametrize("parse", PARSERS)
def test_any_text_is_read_or_counted_never_raised(parse, lines):
    got = parse(lines)
    read = len(got.prefill) + len(got.decode) + got.skipped
    assert got.skipped <= sum(1 for s in lines if s.strip()) <= read
