"""Calibration round-trips: SGLang outputs generated from a known ``LatencyModel`` (with noise) fit back within 5 %
on every coefficient the data constrains, and the fit names the ones it cannot constrain."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sglang_outputs import bench_one_batch_lines, bench_serving_lines, worker_log

from sim.calibration.fit import Estimate, LatencyFit, Unconstrained, fit_latency
from sim.calibration.points import DecodePoint, Measurements, PrefillPoint
from sim.calibration.sources import parse_bench_one_batch, parse_bench_serving, parse_worker_log
from sim.engine.types import LatencyModel
from sim.profiles.profile import LATENCY_KEYS

COEFFICIENTS = list(LATENCY_KEYS)  # the six a fit can give (the MoE terms come from [moe])
# The 8B-on-H100 defaults, and a 70B-at-TP4-like model whose terms differ by up to ~4x (spec section 3).
MODELS = [
    LatencyModel(),
    LatencyModel(
        prefill_floor=14.3e-3,
        prefill_per_token=54.4e-6,
        attention_per_token2=1.64e-9,
        decode_floor=16.6e-3,
        decode_per_seq=60e-6,
        decode_per_ctx_token=0.024e-6,
    ),
]
NOISE = 0.01  # 1 % relative, seeded
REPEATS = 3  # each run three times, as appending bench runs to one result file gives

# The spec's recipe (section 5, steps 2 and 4), plus short prompts for the prefill floor.
COLD_PREFILLS = [(1, n, 2) for n in (16, 32, 48, 64, 128, 512, 2048, 8192, 16384, 32768)]
DECODES = [(b, n, 32) for b in (1, 4, 16, 64, 128, 256) for n in (512, 4096, 16384)]


def assert_within(fit: LatencyFit, model: LatencyModel, names: list[str], tolerance: float = 0.05) -> None:
    for name in names:
        estimate = fit.coefficients[name]
        assert isinstance(estimate, Estimate), f"{name}: {estimate}"
        truth = getattr(model, name)
        assert estimate.value == pytest.approx(truth, rel=tolerance), name
        assert (
            estimate.uncertainty is not None and abs(estimate.value - truth) <= 4 * estimate.uncertainty + 1e-9 * truth
        ), name


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bench_one_batch_results_fit_back_all_six_coefficients(model, seed):
    lines = bench_one_batch_lines(model, (COLD_PREFILLS + DECODES) * REPEATS, noise=NOISE, seed=seed)
    fit = fit_latency(parse_bench_one_batch(lines))
    assert fit.unconstrained == []
    assert_within(fit, model, COEFFICIENTS)
    assert fit.decode_residuals.points == REPEATS * len(COLD_PREFILLS + DECODES)  # output_len 2: one decode step each
    assert fit.prefill_residuals.points == REPEATS * len(COLD_PREFILLS + DECODES)  # every run prefills once
    assert fit.decode_residuals.rms < 3 * NOISE
    assert fit.prefill_residuals.rms < 3 * NOISE


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bench_serving_results_fit_back_all_six_coefficients(model, seed):
    runs = [(1, n, 256) for n in (16, 32, 48, 1024, 2048, 4096, 8192, 16384)]
    runs += [(c, n, 256) for c in (4, 16, 64, 128) for n in (512, 2048, 8192)]
    fit = fit_latency(parse_bench_serving(bench_serving_lines(model, runs * REPEATS, noise=NOISE, seed=seed)))
    assert fit.unconstrained == []
    assert_within(fit, model, COEFFICIENTS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_worker_log_with_client_ttfts_fits_back_all_six_coefficients(model, seed):
    prefills = [(n, 0) for n in (16, 32, 48, 64)]
    prefills += [(n, c) for c in (0, 4096, 16384, 32768) for n in (256, 1024, 4096)]  # spec section 5 step 3
    decodes = [(b, b * ctx) for b in (1, 8, 32, 128, 256) for ctx in (600, 3000, 12000)]
    lines, ttfts = worker_log(model, prefills * REPEATS, decodes * REPEATS, noise=NOISE, seed=seed)
    fit = fit_latency(parse_worker_log(lines, ttfts))
    assert fit.unconstrained == []
    assert_within(fit, model, COEFFICIENTS)


def test_sources_add_up_into_one_fit():
    model = MODELS[1]
    cold = parse_bench_one_batch(bench_one_batch_lines(model, COLD_PREFILLS, noise=NOISE, seed=4))
    lines, ttfts = worker_log(model, [(1024, c) for c in (4096, 16384, 32768)], [], noise=NOISE, seed=5)
    decode = parse_bench_one_batch(bench_one_batch_lines(model, DECODES, noise=NOISE, seed=6))
    fit = fit_latency(cold + parse_worker_log(lines, ttfts) + decode)
    assert_within(fit, model, COEFFICIENTS)


def test_one_batch_size_leaves_decode_per_seq_unconstrained():
    model = MODELS[0]
    fit = fit_latency(parse_bench_one_batch(bench_one_batch_lines(model, [(1, n, 32) for n in (512, 4096, 16384)])))
    assert fit.unconstrained == ["prefill_floor", "decode_per_seq"]  # and no prompt of 64 tokens or fewer
    assert "one batch size" in fit.coefficients["decode_per_seq"].reason
    # The floor absorbs the one batch size's per-sequence cost: 30 us on 5.6 ms.
    assert fit.coefficients["decode_floor"].value == pytest.approx(model.decode_floor + model.decode_per_seq)
    assert fit.coefficients["decode_per_ctx_token"].value == pytest.approx(model.decode_per_ctx_token)


def test_cold_prefills_of_one_length_leave_attention_unconstrained():
    fit = fit_latency(Measurements(prefill=(PrefillPoint(1, 2048, 0, 0.05), PrefillPoint(1, 2048, 0, 0.052))))
    assert isinstance(fit.coefficients["prefill_per_token"], Estimate)
    reason = fit.coefficients["attention_per_token2"]
    assert isinstance(reason, Unconstrained) and "cold prefills of one length" in reason.reason


def test_no_short_prompts_leave_the_prefill_floor_unconstrained_and_decode_only_data_every_prefill_term():
    long_only = [(1, n, 2) for n in (2048, 8192, 32768)]
    fit = fit_latency(parse_bench_one_batch(bench_one_batch_lines(MODELS[0], long_only)))
    assert fit.unconstrained == ["prefill_floor", "decode_per_seq"]
    assert_within(fit, MODELS[0], ["prefill_per_token", "attention_per_token2"], tolerance=1e-6)

    decode = (DecodePoint(1, 600, 6e-3), DecodePoint(8, 4800, 6.5e-3), DecodePoint(8, 40_000, 8e-3))
    decode_only = fit_latency(Measurements(decode=decode))
    assert decode_only.unconstrained == ["prefill_floor", "prefill_per_token", "attention_per_token2"]


def test_points_that_leave_no_degree_of_freedom_give_no_uncertainty():
    fit = fit_latency(Measurements(decode=(DecodePoint(1, 600, 6e-3), DecodePoint(8, 4800, 6.5e-3))))
    assert "decode_per_ctx_token" in fit.unconstrained  # context is 600 per sequence in both points
    assert fit.coefficients["decode_floor"] == Estimate(pytest.approx(6e-3 - 0.5e-3 / 7), None)


def test_no_points_at_all_is_a_clear_error():
    with pytest.raises(ValueError, match=r"nothing to fit.*3 malformed and 2 foreign"):
        fit_latency(Measurements(malformed=3, foreign=2))


positive = st.floats(min_value=0.1, max_value=10)


@settings(max_examples=40, deadline=None)
@given(scales=st.tuples(positive, positive, positive, positive, positive, positive))
def test_noiseless_results_fit_back_exactly_for_any_coefficients(scales):
    """Any non-negative model within 10x of the defaults either way is recovered from exact measurements."""
    default = LatencyModel()
    model = LatencyModel(**{n: getattr(default, n) * s for n, s in zip(COEFFICIENTS, scales, strict=True)})
    assume(model.prefill_per_token * 32 < model.prefill_floor)  # two short prompts at the floor: an error for it
    fit = fit_latency(parse_bench_one_batch(bench_one_batch_lines(model, COLD_PREFILLS + DECODES)))
    assert_within(fit, model, COEFFICIENTS, tolerance=1e-6)


def test_a_floor_below_the_shortest_prompt_comes_out_as_its_time():
    model = LatencyModel(prefill_floor=0.5e-3, prefill_per_token=60e-6)  # 16 tokens take 0.96 ms
    fit = fit_latency(parse_bench_one_batch(bench_one_batch_lines(model, COLD_PREFILLS + DECODES)))
    assert fit.coefficients["prefill_floor"].value == pytest.approx(16 * model.prefill_per_token)
    assert_within(fit, model, COEFFICIENTS[1:], tolerance=1e-6)
