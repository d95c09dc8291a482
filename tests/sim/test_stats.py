"""sim.stats: seed lists, Student t intervals against textbook values, paired differences by seed."""

from __future__ import annotations

import pytest

from sim.stats import beyond_noise, describe, paired_difference, parse_seeds, summarize_configurations, t_quantile


@pytest.mark.parametrize("text,seeds", [("0-9", list(range(10))), ("0,3,5", [0, 3, 5]), ("0-4,8", [0, 1, 2, 3, 4, 8]),
                                        ("7", [7]), ("2-3,3", [2, 3]), (" 1 , 4-5 ", [1, 4, 5])])
def test_seeds_are_ranges_and_lists(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "-2", "0-", "1,,2", "0..9"])
def test_seeds_refuse_anything_else(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


# two-sided 95 % critical values of Student's t (any statistics table)
@pytest.mark.parametrize("df,q", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706), (9, 2.2622),
                                  (10, 2.2281), (30, 2.0423), (100, 1.9840), (1000, 1.9623)])
def test_t_quantile_matches_the_table(df, q):
    assert t_quantile(df) == pytest.approx(q, abs=5e-5)


def test_t_quantile_other_confidence():
    assert t_quantile(4, 0.99) == pytest.approx(4.6041, abs=5e-5)
    assert t_quantile(10, 0.90) == pytest.approx(1.8125, abs=5e-5)


def test_describe_mean_std_and_interval():
    d = describe([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d["n"] == 5 and d["mean"] == 3.0
    assert d["std"] == pytest.approx(1.5811388, rel=1e-7)
    half = 2.7764451 * 1.5811388 / 5 ** 0.5
    assert d["ci95"] == pytest.approx([3.0 - half, 3.0 + half], rel=1e-6)


def test_one_value_has_no_interval():
    assert describe([0.5]) == {"n": 1, "mean": 0.5, "std": None, "ci95": None}
    assert beyond_noise(None) is None


def test_beyond_noise_is_an_interval_that_excludes_zero():
    assert beyond_noise([0.1, 0.3]) is True and beyond_noise([-0.3, -0.1]) is True
    assert beyond_noise([-0.1, 0.2]) is False and beyond_noise([0.0, 0.0]) is False


def _row(label, seed, reuse, errors=0):
    return {"label": label, "seed": seed, "kv_reuse": reuse, "errors": errors, "routing_key": True, "policy": "p"}


def test_summary_per_configuration_keeps_seed_order():
    rows = [_row("a", 0, 0.5), _row("b", 0, 0.1), _row("a", 1, 0.7), _row("b", 1, 0.3)]
    [a, b] = summarize_configurations(rows, ("kv_reuse", "errors", "routing_key"))
    assert a["label"] == "a" and a["seeds"] == [0, 1] and b["label"] == "b"
    assert a["measures"]["kv_reuse"]["mean"] == pytest.approx(0.6)
    assert set(a["measures"]) == {"kv_reuse", "errors"}  # booleans are not measures


def test_paired_difference_cancels_what_a_seed_does_to_both():
    # the seeds move both configurations a lot, the difference is always about +0.1: beyond noise when paired
    rows = [_row("a", s, base + 0.1 + e) for s, (base, e) in enumerate([(0.2, 0.0), (0.6, 0.01), (0.9, -0.01)])]
    rows += [_row("b", s, base) for s, base in enumerate([0.2, 0.6, 0.9])]
    d = paired_difference(rows, "a", "b", ("kv_reuse",))
    assert d["seeds"] == [0, 1, 2] and d["versus"] == "b"
    k = d["measures"]["kv_reuse"]
    assert k["mean"] == pytest.approx(0.1) and k["beyond_noise"] is True
    assert summarize_configurations(rows, ("kv_reuse",))[0]["measures"]["kv_reuse"]["ci95"][0] < 0.2  # unpaired: wide


def test_identical_configurations_are_within_noise():
    rows = [_row(lab, s, 0.1 * s) for lab in ("a", "b") for s in range(4)]
    k = paired_difference(rows, "a", "b", ("kv_reuse",))["measures"]["kv_reuse"]
    assert k["mean"] == 0 and k["ci95"] == [0, 0] and k["beyond_noise"] is False


def test_pairs_only_shared_seeds():
    rows = [_row("a", 0, 0.5), _row("a", 1, 0.6), _row("b", 1, 0.4)]
    d = paired_difference(rows, "a", "b", ("kv_reuse",))
    assert d["seeds"] == [1] and d["measures"]["kv_reuse"]["beyond_noise"] is None  # one pair: no interval
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference([_row("a", 0, 0.5), _row("b", 1, 0.4)], "a", "b", ("kv_reuse",))
