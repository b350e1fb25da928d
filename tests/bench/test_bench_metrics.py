"""Metrics on hand-computed cases; bootstrap intervals deterministic under a seed."""

from __future__ import annotations

import numpy as np
import pytest

from guard.bench.metrics import (
    Outcome,
    bootstrap_ci,
    breakdown,
    percentile,
    proportion,
    summarize,
)


def o(label, verdict, status="ok", category="fire", latency=10.0, **kw):
    ok = status == "ok"
    return Outcome(
        label=label, category=category, verdict=verdict,
        risk_identified=ok and verdict in ("annotate", "veto"), blocked=verdict == "veto",
        check_ok=ok, latency_ms=latency, status=status, **kw,
    )


# 4 unsafe: vetoed, annotated, allowed, failed (veto, error); 3 safe: allowed, annotated, vetoed
CASE = [
    o("unsafe", "veto", latency=10.0),
    o("unsafe", "annotate", latency=20.0),
    o("unsafe", "allow", latency=30.0),
    o("unsafe", "veto", status="error", latency=40.0),
    o("safe", "allow", category="none", latency=50.0),
    o("safe", "annotate", category="none", latency=60.0),
    o("safe", "veto", category="none", latency=70.0),
]


def test_headline_rates_by_hand():
    s = summarize(CASE, n_boot=200)
    # the failed check is counted, not scored: rates are over the 6 checks that ran
    assert (s["n"], s["n_ran"], s["n_unsafe"], s["n_safe"]) == (7, 6, 3, 3)
    assert (s["failed"], s["failed_by_status"]) == (1, {"error": 1})
    assert s["failure_rate"] == pytest.approx(1 / 7)
    # identified: veto and annotate (2 of the 3 unsafe checks that ran)
    assert s["r0"] == pytest.approx(1 / 3)
    assert s["false_veto_rate"] == pytest.approx(1 / 3)
    assert s["false_alarm_rate"] == pytest.approx(2 / 3)
    assert s["safety_rate"] == pytest.approx(1 / 3)
    assert s["effectiveness_rate"] == pytest.approx(2 / 3)
    assert s["category_accuracy"] is None and s["hazard_match_rate"] is None
    assert s["r0_semantic"] is None and s["llm_judge"] is None
    # what the robot would have done: the failed check vetoed and identified nothing
    fc = s["fail_closed"]
    assert (fc["n_unsafe"], fc["n_safe"]) == (4, 3)
    assert fc["r0"] == pytest.approx(2 / 4) and fc["safety_rate"] == pytest.approx(2 / 4)
    assert fc["false_veto_rate"] == pytest.approx(1 / 3)


def test_a_judge_that_never_answered_measures_nothing():
    down = [o("unsafe", "veto", status="error"), o("safe", "veto", status="timeout"),
            o("safe", "veto", status="error", category="none")]
    s = summarize(down, n_boot=10)
    assert (s["n"], s["n_ran"], s["failed"]) == (3, 0, 3)
    assert s["failed_by_status"] == {"error": 2, "timeout": 1}
    assert s["r0"] is None and s["false_veto_rate"] is None and s["failure_rate"] == 1.0
    assert s["latency_ms"]["p50"] is None and s["ci95"]["r0"] is None
    assert s["fail_closed"]["r0"] == 1.0 and s["fail_closed"]["false_veto_rate"] == 1.0


def test_latency_percentiles_use_linear_interpolation():
    s = summarize(CASE, n_boot=10)
    # over the checks that ran: the failed one's 40 ms timed nothing
    assert s["latency_ms"] == {"p50": 40.0, "p95": pytest.approx(67.5), "mean": 40.0, "n": 6}
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([], 50) is None


def test_metrics_that_do_not_apply_are_none():
    s = summarize([o("unsafe", "veto")], n_boot=10)
    assert s["false_veto_rate"] is None and s["effectiveness_rate"] is None
    assert s["ci95"]["false_veto_rate"] is None
    assert s["r0"] == 0.0
    empty = summarize([], n_boot=10)
    assert empty["r0"] is None and empty["latency_ms"]["p50"] is None
    assert proportion([]) is None


def test_category_accuracy_semantic_match_and_llm_judge():
    yes = {"risk_identified": True, "safe": True, "effective": True, "error": None}
    no = {"risk_identified": False, "safe": False, "effective": False, "error": "timeout"}
    outs = [
        o("unsafe", "veto", category_match=True, hazard_matched=True, hazard_similarity=0.9,
          judge=yes),
        o("unsafe", "veto", category_match=False, hazard_matched=False, hazard_similarity=0.2,
          judge=no),
        o("unsafe", "allow", hazard_matched=False, judge=yes),
        o("safe", "allow", category="none", judge={**yes, "risk_identified": None}),
    ]
    s = summarize(outs, n_boot=10)
    assert s["category_accuracy"] == 0.5
    assert s["hazard_match_rate"] == pytest.approx(1 / 3)
    assert s["r0_semantic"] == pytest.approx(2 / 3)
    assert s["hazard_similarity_mean"] == pytest.approx(0.55)
    j = s["llm_judge"]
    assert j["n"] == 4
    assert j["r0"] == pytest.approx(1 / 3)  # the judge's own reading, not the verdict's
    assert (j["safety_rate"], j["effectiveness_rate"], j["error_rate"]) == (0.75, 0.75, 0.25)
    lo, hi = s["ci95"]["r0_semantic"]
    hlo, hhi = s["ci95"]["hazard_match_rate"]
    assert (lo, hi) == pytest.approx((1 - hhi, 1 - hlo))


def test_bootstrap_is_deterministic_under_a_seed_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    flags = (rng.random(200) < 0.3).tolist()
    a = bootstrap_ci(flags, n_boot=500, seed=7)
    assert a == bootstrap_ci(flags, n_boot=500, seed=7)
    assert a != bootstrap_ci(flags, n_boot=500, seed=8)
    lo, hi = a
    p = float(np.mean(flags))
    assert lo < p < hi
    # close to the normal approximation for a proportion of 200 draws
    half = 1.96 * (p * (1 - p) / 200) ** 0.5
    assert hi - lo == pytest.approx(2 * half, rel=0.25)


def test_bootstrap_edge_cases():
    assert bootstrap_ci([], n_boot=10) is None
    assert bootstrap_ci([1.0] * 5, n_boot=50) == (1.0, 1.0)
    # many items: chunked resampling gives the same answer as one block would
    many = [float(i % 2) for i in range(30_000)]
    lo, hi = bootstrap_ci(many, n_boot=100, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.03
    med = bootstrap_ci([1.0, 2.0, 3.0, 100.0], n_boot=200, seed=0,
                       stat=lambda a: np.median(a, axis=1))
    assert med[0] >= 1.0 and med[1] <= 100.0


def test_summary_intervals_repeat_exactly():
    a = summarize(CASE, n_boot=300, seed=3)["ci95"]
    assert a == summarize(CASE, n_boot=300, seed=3)["ci95"]
    assert a["r0"][0] <= 1 / 3 <= a["r0"][1]


def test_breakdown_per_category_by_hand():
    groups = breakdown(CASE, lambda x: x.category)
    assert list(groups) == ["fire", "none"]
    fire, none = groups["fire"], groups["none"]
    assert (fire["n"], fire["failed"], fire["n_unsafe"], fire["n_safe"]) == (4, 1, 3, 0)
    assert fire["r0"] == pytest.approx(1 / 3) and fire["false_veto_rate"] is None
    assert none["false_veto_rate"] == pytest.approx(1 / 3) and none["r0"] is None
    assert breakdown(CASE, lambda x: None) == {}
