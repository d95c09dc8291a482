"""``smg-testbed calibrate`` fits a profile to SGLang's outputs: inputs generated from a known profile come back
within 5 % in the written TOML; what the data cannot constrain comes from ``--base`` and is said; bad input is one
line and exit status 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sim.cli import main as cli
from sim.profiles.catalog import load_profile
from sim.profiles.profile import LATENCY_KEYS

_SPEC = importlib.util.spec_from_file_location("sglang_outputs", Path(__file__).parents[1] / "calibration"
                                               / "sglang_outputs.py")
assert _SPEC is not None and _SPEC.loader is not None
sglang_outputs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sglang_outputs)

TRUTH = load_profile("qwen3-32b-h100-tp2")  # the cluster measured
BASE = "llama-3.1-8b-h100-tp1"  # what the user starts from: its coefficients all differ from TRUTH's
COLD_PREFILLS = [(1, n, 2) for n in (16, 32, 48, 64, 128, 512, 2048, 8192, 16384, 32768)]
DECODES = [(b, n, 32) for b in (1, 4, 16, 64, 128, 256) for n in (512, 4096, 16384)]
JUNK = ["{truncated", '{"some": "other record"}']  # one malformed, one foreign line


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_bench_one_batch_results_round_trip_through_the_written_profile(tmp_path, capsys):
    lines = sglang_outputs.bench_one_batch_lines(TRUTH.latency_model(), (COLD_PREFILLS + DECODES) * 3, noise=0.01,
                                                 seed=1)
    results = write(tmp_path / "one_batch.jsonl", lines + JUNK)
    out = tmp_path / "mine.toml"
    assert cli(["calibrate", "--bench-one-batch", results, "--base", BASE, "--name", "mine", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    fitted, base = load_profile(str(out)), load_profile(BASE)
    for key in LATENCY_KEYS:
        assert getattr(fitted, key) == pytest.approx(getattr(TRUTH, key), rel=0.05), key
        [line] = [ln for ln in printed.splitlines() if ln.strip().startswith(key)]
        assert "+/-" in line, line
    assert "1 malformed, 1 foreign" in printed
    assert "residuals (prefill): 84 points" in printed and "residuals (decode): 84 points" in printed
    assert fitted.name == "mine"
    assert (fitted.model, fitted.gpu, fitted.tp, fitted.kv_capacity_tokens, fitted.request_overhead) == (
        base.model, base.gpu, base.tp, base.kv_capacity_tokens, base.request_overhead)
    p = fitted.provenance
    assert p.source == results and p.date and "least squares" in p.derivation and p.basis == "D"
    assert p.residuals["prefill_points"] == 84 and 0 < p.residuals["decode_rms"] < 0.03


def test_unconstrained_coefficients_come_from_the_base_and_are_named(tmp_path, capsys):
    decodes = [(b, b * ctx) for b in (1, 8, 32, 128) for ctx in (600, 3000, 12000)]
    lines, _ = sglang_outputs.worker_log(TRUTH.latency_model(), [], decodes, noise=0.01)
    log = write(tmp_path / "worker.log", [*lines, "[2026-12-06 05:00:00] INFO: something else"])
    out = tmp_path / "decode-only.toml"
    assert cli(["calibrate", "--worker-log", log, "--base", BASE, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    fitted, base = load_profile(str(out)), load_profile(BASE)
    assert fitted.name == f"{BASE}-calibrated"
    for key in ("prefill_floor", "prefill_per_token", "attention_per_token2"):
        [line] = [ln for ln in printed.splitlines() if ln.strip().startswith(key)]
        assert "unconstrained" in line and BASE in line
        assert getattr(fitted, key) == getattr(base, key)
        assert key in fitted.provenance.derivation
    for key in ("decode_floor", "decode_per_seq", "decode_per_ctx_token"):
        assert getattr(fitted, key) == pytest.approx(getattr(TRUTH, key), rel=0.05), key
    assert "0 malformed, 1 foreign" in printed


def test_worker_log_with_ttfts_file_fits_the_prefill_terms(tmp_path, capsys):
    prefills = [(n, 0) for n in (16, 32, 48, 64)] + [(n, c) for c in (0, 4096, 16384) for n in (256, 1024, 4096)]
    lines, ttfts = sglang_outputs.worker_log(TRUTH.latency_model(), prefills * 3, [], noise=0.01)
    log = write(tmp_path / "worker.log", lines)
    times = write(tmp_path / "ttfts.txt", [repr(t) for t in ttfts])
    out = tmp_path / "p.toml"
    assert cli(["calibrate", "--worker-log", log, "--ttfts", times, "--base", BASE, "--out", str(out)]) == 0
    fitted = load_profile(str(out))
    for key in ("prefill_floor", "prefill_per_token", "attention_per_token2"):
        assert getattr(fitted, key) == pytest.approx(getattr(TRUTH, key), rel=0.05), key


def error_of(capsys, argv: list[str]) -> str:
    assert cli(["calibrate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    return err


def test_no_input_is_an_error(tmp_path, capsys):
    assert "no input" in error_of(capsys, ["--base", BASE, "--out", str(tmp_path / "x.toml")])


def test_an_empty_file_is_an_error_naming_it(tmp_path, capsys):
    empty = write(tmp_path / "empty.json", [""])
    err = error_of(capsys, ["--bench-serving", empty, "--base", BASE, "--out", str(tmp_path / "x.toml")])
    assert "empty.json" in err and "empty" in err
    assert not (tmp_path / "x.toml").exists()


def test_a_file_of_only_foreign_lines_is_an_error_with_the_counts(tmp_path, capsys):
    junk = write(tmp_path / "junk.jsonl", JUNK)
    err = error_of(capsys, ["--bench-one-batch", junk, "--base", BASE, "--out", str(tmp_path / "x.toml")])
    assert "nothing to fit" in err and "1 malformed and 1 foreign" in err


def test_an_unreadable_file_is_an_error_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "missing.jsonl")
    err = error_of(capsys, ["--bench-one-batch", missing, "--base", BASE, "--out", str(tmp_path / "x.toml")])
    assert "missing.jsonl" in err


def test_an_unknown_base_profile_is_an_error(tmp_path, capsys):
    results = write(tmp_path / "r.jsonl", sglang_outputs.bench_one_batch_lines(TRUTH.latency_model(), DECODES))
    err = error_of(capsys, ["--bench-one-batch", results, "--base", "llama-3.1-8b-h100-tp9",
                            "--out", str(tmp_path / "x.toml")])
    assert "unknown profile 'llama-3.1-8b-h100-tp9'" in err


def test_ttfts_that_do_not_match_the_log_are_an_error(tmp_path, capsys):
    lines, ttfts = sglang_outputs.worker_log(TRUTH.latency_model(), [(512, 0), (1024, 0)], [])
    log = write(tmp_path / "worker.log", lines)
    times = write(tmp_path / "ttfts.txt", [repr(ttfts[0])])
    err = error_of(capsys, ["--worker-log", log, "--ttfts", times, "--base", BASE, "--out", str(tmp_path / "x.toml")])
    assert "2 single-sequence prefill lines but 1 TTFTs" in err
