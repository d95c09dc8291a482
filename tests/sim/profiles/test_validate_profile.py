"""``smg-testbed validate-profile PROFILE --against CSV`` replays each measured run through one simulated worker and
prints predicted vs measured TTFT and TPOT, ending with ``ttft_error=X tpot_error=Y`` (mean absolute relative
errors); a bad CSV is one line and exit status 2."""

from __future__ import annotations

import pytest

from sim.cli import main as cli
from sim.commands.validate_profile import HEADER, MeasuredRun, parse_runs, predict
from sim.profiles.catalog import load_profile

PROFILE = "qwen3-32b-h100-tp2"
MIXES = [(1024, 256, 1, 20), (2048, 512, 16, 200), (4096, 128, 64, 300)]  # input, output, concurrency, requests


def csv_text(rows: list[tuple]) -> str:
    return "\n".join([",".join(HEADER), *(",".join(repr(v) for v in row) for row in rows)]) + "\n"


def predicted_rows(scale_ttft: float = 1.0, scale_tpot: float = 1.0) -> list[tuple]:
    """The profile's own predictions as measurements, each divided by a scale (a scale of 1.2: 20 % off)."""
    profile = load_profile(PROFILE)
    rows = []
    for mix in MIXES:
        p = predict(profile, MeasuredRun(*mix, 1.0, 1.0))
        rows.append((*mix, p.ttft_mean_ms / scale_ttft, p.tpot_mean_ms / scale_tpot))
    return rows


def last_line(capsys, tmp_path, text: str) -> tuple[list[str], str]:
    path = tmp_path / "measured.csv"
    path.write_text(text)
    assert cli(["validate-profile", PROFILE, "--against", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, lines[-1]


def test_a_profile_validated_against_its_own_predictions_has_no_error(capsys, tmp_path):
    lines, last = last_line(capsys, tmp_path, csv_text(predicted_rows()))
    assert last == "ttft_error=0.000 tpot_error=0.000"
    assert sum("+0.0%" in ln for ln in lines) == len(MIXES)


def test_measurements_20_percent_off_give_errors_of_0_2(capsys, tmp_path):
    rows = predicted_rows(1.2, 0.8)  # predicted 20 % above the measured TTFT, 20 % below the measured TPOT
    lines, last = last_line(capsys, tmp_path, csv_text(rows))
    assert last == "ttft_error=0.200 tpot_error=0.200"
    assert sum("+20.0%" in ln and "-20.0%" in ln for ln in lines) == len(MIXES)


def test_the_prediction_follows_the_closed_loop():
    """Alone, a request's TTFT is its cold prefill plus the overhead; more clients queue behind one another."""
    profile = load_profile(PROFILE)
    m = profile.latency_model()
    alone = predict(profile, MeasuredRun(1024, 64, 1, 5, 1.0, 1.0))
    cold = max(m.prefill_floor, m.prefill_per_token * 1024) + m.attention_per_token2 * 1024 * 512
    assert alone.ttft_mean_ms == pytest.approx(1000 * (cold + profile.request_overhead), rel=1e-9)
    crowded = predict(profile, MeasuredRun(1024, 64, 32, 64, 1.0, 1.0))
    assert crowded.ttft_mean_ms > alone.ttft_mean_ms and crowded.tpot_mean_ms > alone.tpot_mean_ms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("input_tokens,output_tokens,concurrency,requests,ttft_ms,tpot_ms\n1,2,1,1,1,1\n", "header must be exactly"),
        ("output_tokens,input_tokens,concurrency,requests,ttft_mean_ms,tpot_mean_ms\n1,2,1,1,1,1\n",
         "header must be exactly"),
        (",".join(HEADER) + "\n", "no measured run"),
        (",".join(HEADER) + "\n1024,256,four,10,50,7\n", "concurrency: not a number: 'four'"),
        (",".join(HEADER) + "\n1024,256,4,10,50\n", "5 values, expected 6"),
        (",".join(HEADER) + "\n1024,256,2.5,10,50,7\n", "concurrency must be a whole number"),
        (",".join(HEADER) + "\n1024,256,4,10,0,7\n", "ttft_mean_ms must be > 0"),
    ],
)
def test_a_bad_csv_is_a_one_line_error(capsys, tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert cli(["validate-profile", PROFILE, "--against", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err and "bad.csv" in err, err


def test_mean_lengths_are_rounded_to_whole_tokens():
    [run] = parse_runs(",".join(HEADER) + "\n1023.6,255.2,4,10,50,7\n", "m.csv")
    assert run == MeasuredRun(1024, 255, 4, 10, 50.0, 7.0)


def test_an_unknown_profile_and_a_missing_file_are_one_line_errors(capsys, tmp_path):
    assert cli(["validate-profile", "nope", "--against", str(tmp_path / "m.csv")]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert cli(["validate-profile", PROFILE, "--against", str(tmp_path / "m.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
