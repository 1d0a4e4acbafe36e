"""Seeds of one comparison: spread (mean, sd, se), paired differences by seed and the per-method summary."""

import math

import pytest

from pyro_vae.compare.seeds import paired_difference, spread, summarize


def _row(name, seed, ll, elbo=None, converged=True, reason="plateau"):
    return {"name": name, "seed": seed, "converged": converged, "stop_reason": reason, "estimator": "exact",
            "test_log_likelihood": ll, "test_elbo": ll - 1.0 if elbo is None else elbo, "val_log_px": ll,
            "seconds": 1.0, "epochs": 10, "examples_per_second": 100.0}


def test_spread_of_three_values():
    s = spread([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert sd == pytest.approx(math.sqrt(7 / 3))
    assert s["mean"] == pytest.approx(7 / 3) and s["sd"] == pytest.approx(sd)
    assert s["se"] == pytest.approx(sd / math.sqrt(3))
    assert (s["min"], s["max"], s["n"], s["values"]) == (1.0, 4.0, 3, [1.0, 2.0, 4.0])


def test_spread_skips_none_and_nan_and_has_no_sd_below_two():
    s = spread([1.0, None, float("nan"), 3.0])
    assert s["n"] == 2 and s["mean"] == pytest.approx(2.0) and s["sd"] == pytest.approx(math.sqrt(2.0))
    one = spread([5.0, None])
    assert one["n"] == 1 and one["mean"] == 5.0 and one["sd"] is None and one["se"] is None
    none = spread([None, float("nan")])
    assert none["n"] == 0 and none["mean"] is None and none["values"] == []


def test_paired_difference_uses_matching_seeds_only():
    d = paired_difference({0: 2.0, 1: 3.0, 2: 5.0, 7: 100.0}, {0: 1.0, 1: 1.0, 2: 2.0, 3: -50.0})
    diffs = [1.0, 2.0, 3.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(mean) and d["se"] == pytest.approx(sd / math.sqrt(3))
    skipped = paired_difference({0: 2.0, 1: None, 2: float("nan")}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert skipped["seeds"] == [0] and skipped["mean"] == 1.0 and skipped["se"] is None


def test_summarize_groups_by_method_and_pairs_against_the_first_by_default():
    rows = [_row("a", 0, -10.0), _row("a", 1, -12.0), _row("b", 0, -9.0, converged=False, reason="max_epochs"),
            _row("b", 1, -10.0)]
    s = summarize(rows)
    assert s["baseline"] == "a" and [m["name"] for m in s["methods"]] == ["a", "b"]
    a, b = s["methods"]
    assert a["n_seeds"] == 2 and a["n_converged"] == 2 and a["seeds"] == [0, 1]
    assert b["n_converged"] == 1 and b["stop_reasons"] == {"max_epochs": 1, "plateau": 1}
    assert a["test_log_likelihood"]["mean"] == pytest.approx(-11.0)
    assert a["test_log_likelihood"]["sd"] == pytest.approx(math.sqrt(2.0))
    ll = next(d for d in s["differences"] if d["metric"] == "test_log_likelihood")
    assert (ll["name"], ll["baseline"]) == ("b", "a")
    assert ll["mean"] == pytest.approx(1.5)  # differences 1 and 2
    assert ll["se"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert {d["metric"] for d in s["differences"]} == {"test_log_likelihood", "test_elbo", "val_log_px"}
    other = summarize(rows, "b")
    assert other["baseline"] == "b" and {d["name"] for d in other["differences"]} == {"a"}


def test_summarize_refuses_an_unknown_baseline():
    with pytest.raises(ValueError, match="baseline 'zz'"):
        summarize([_row("a", 0, -1.0)], "zz")
