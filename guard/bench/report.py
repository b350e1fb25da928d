"""From per-item records to results.json, a markdown table and a PNG plot.

matplotlib is imported only to draw the plot; without it, `write_plot` raises an error naming
the `bench` extra (results.json and the table are written first).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from guard.bench.items import DEFAULT_MAX_FAILED_SHARE, BadItem, BenchItem, SuiteData
from guard.bench.metrics import DEFINITIONS, Outcome, breakdown, summarize
from guard.errors import MissingExtraError

MAX_LISTED_BAD = 1000


def outcome_from_record(record: dict[str, Any], groups: Sequence[str] = ()) -> Outcome:
    """The metrics' view of one scored per_item.jsonl record."""
    d, s = record["decision"], record["scores"]
    meta = record.get("meta") or {}
    return Outcome(
        label=record["label"],
        category=record["category"],
        verdict=d["verdict"],
        risk_identified=bool(s["risk_identified"]),
        blocked=bool(s["blocked"]),
        check_ok=bool(s["check_ok"]),
        latency_ms=float(d.get("latency_ms") or 0.0),
        status=str(d.get("status") or "error"),
        category_match=s.get("category_match"),
        hazard_matched=s.get("hazard_matched"),
        hazard_similarity=s.get("hazard_similarity"),
        judge=record.get("judge"),
        groups={g: str(meta[g]) for g in groups if meta.get(g) is not None},
    )


def _group_key(name: str) -> Callable[[Outcome], str | None]:
    return lambda o: o.groups.get(name)


def build_results(
    suite: SuiteData,
    selected: Sequence[BenchItem],
    records: dict[str, dict[str, Any]],
    *,
    run: dict[str, Any],
    seed: int = 0,
    n_boot: int = 1000,
    complete: bool = True,
    max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
) -> dict[str, Any]:
    """results.json: the contract fields (suite, n, r0, false_veto_rate, per_category,
    latency_ms p50/p95) first, then everything else. Metrics that do not apply are None.

    Rates are over the checks that ran; failed checks are counted (`failed`,
    `failed_by_status`) and a note says how many were left out of the rates.
    `judge_unreachable` is true when items were scored and not one check ran;
    `failed_over_limit` when the failure rate is above `max_failed_share` (or the judge was
    unreachable): either way the metrics do not describe the model, and the CLI exits 1.

    Args:
        suite: The loaded suite (its bad items and notes are reported).
        selected: The items this run covers (after --limit), in order.
        records: per_item.jsonl records by id.
        run: What ran: model, policy, concurrency, timings, ...
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.
        complete: False for the partial results of an interrupted run.
        max_failed_share: The failure rate above which the run does not count.
    """
    scored = [records[i.id] for i in selected if records.get(i.id, {}).get("scored")]
    outcomes = [outcome_from_record(r, suite.breakdowns) for r in scored]
    bad = list(suite.bad) + [
        BadItem(i.id, records[i.id].get("source", i.id), records[i.id].get("bad", "unknown"))
        for i in selected if i.id in records and not records[i.id].get("scored")
    ]
    summary = summarize(outcomes, n_boot=n_boot, seed=seed)
    pending = sum(1 for i in selected if i.id not in records)
    n, failed = summary["n"], summary["failed"]
    unreachable = n > 0 and failed == n
    over_limit = unreachable or (n > 0 and failed / n > max_failed_share)
    notes = _failure_notes(summary, unreachable, over_limit, max_failed_share)
    results: dict[str, Any] = {
        "suite": suite.name,
        "n": summary.pop("n"),
        "r0": summary.pop("r0"),
        "false_veto_rate": summary.pop("false_veto_rate"),
        "per_category": breakdown(outcomes, lambda o: o.category),
        "latency_ms": summary.pop("latency_ms"),
        "complete": complete and pending == 0,
        "n_selected": len(selected),
        "n_pending": pending,
        "n_bad": len(bad),
        "judge_unreachable": unreachable,
        "failed_over_limit": over_limit,
        "max_failed_share": max_failed_share,
        **summary,
        "breakdowns": {g: breakdown(outcomes, _group_key(g)) for g in suite.breakdowns},
        "bad_items": [b.to_dict() for b in bad[:MAX_LISTED_BAD]],
        "bad_items_truncated": len(bad) > MAX_LISTED_BAD,
        "notes": notes + list(suite.notes),
        "run": run,
        "definitions": DEFINITIONS,
    }
    results["breakdowns"] = {k: v for k, v in results["breakdowns"].items() if v}
    return results


def _failure_notes(summary: dict[str, Any], unreachable: bool, over_limit: bool,
                   limit: float) -> list[str]:
    """What the failed checks did to the metrics, in words (results.json and results.md)."""
    n, failed = summary["n"], summary["failed"]
    if not failed:
        return []
    by_status = ", ".join(f"{k} {v}" for k, v in summary["failed_by_status"].items())
    if unreachable:
        return [f"the judge could not be reached: none of the {n} checks ran ({by_status}); "
                "no rate applies and this run does not describe the model"]
    note = (f"{failed} of {n} checks did not run ({by_status}); every rate is over the "
            f"{summary['n_ran']} that ran, and fail_closed gives them with the failed checks "
            "counted as vetoes that identified nothing")
    if over_limit:
        note += (f"; that is more than the {limit:g} share a run may lose, so these metrics "
                 "do not describe the model")
    return [note]


def write_results(results: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# -- markdown --------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown_table(results: dict[str, Any]) -> str:
    """The headline metrics, per category and per breakdown, as markdown."""
    run = results.get("run") or {}
    ci = results.get("ci95") or {}
    nu, ns = results.get("n_unsafe", 0), results.get("n_safe", 0)
    lines = [
        f"# guard bench: {results['suite']}",
        "",
        f"Model `{run.get('model', '?')}`, policy `{run.get('policy', '?')}`; "
        f"{results['n']} items scored, {results.get('failed', 0)} of them checks that did not "
        f"run; rates over the {results.get('n_ran', results['n'])} that ran ({nu} unsafe, "
        f"{ns} safe); {results['n_bad']} bad"
        + ("" if results.get("complete") else f", {results.get('n_pending', 0)} pending "
           "(interrupted: re-run to finish)") + ".",
        "",
        "| metric | value | 95% CI | over |",
        "|---|---|---|---|",
    ]
    rows = [
        ("R0 (risk not identified)", "r0", f"{nu} unsafe"),
        ("false-veto rate", "false_veto_rate", f"{ns} safe"),
        ("false-alarm rate (annotate or veto)", "false_alarm_rate", f"{ns} safe"),
        ("safety rate S (unsafe vetoed)", "safety_rate", f"{nu} unsafe"),
        ("effectiveness rate E (safe not vetoed)", "effectiveness_rate", f"{ns} safe"),
        ("checks that did not run (status != ok)", "failure_rate", f"{results['n']} scored"),
        ("hazard category accuracy", "category_accuracy", "flagged unsafe"),
        ("hazard semantic match", "hazard_match_rate", "unsafe with reference hazard"),
        ("R0 semantic (missed or wrong hazard)", "r0_semantic", "unsafe with reference hazard"),
    ]
    for name, key, over in rows:
        if results.get(key) is None and key not in ("r0", "false_veto_rate"):
            continue
        lines.append(f"| {name} | {_f(results.get(key))} | {_ci(ci.get(key))} | {over} |")
    fc = results.get("fail_closed")
    if results.get("failed") and fc:
        # what the robot would have done: a failed check is a veto that identified nothing
        lines.append(f"| R0, failed checks counted | {_f(fc['r0'])} | | "
                     f"{fc['n_unsafe']} unsafe scored |")
        lines.append(f"| false-veto rate, failed checks counted | "
                     f"{_f(fc['false_veto_rate'])} | | {fc['n_safe']} safe scored |")
    judge = results.get("llm_judge")
    if judge:
        jci = judge.get("ci95") or {}
        for name, key, over in (("LLM judge R0", "r0", f"{nu} unsafe"),
                                ("LLM judge safety S", "safety_rate", "all"),
                                ("LLM judge effectiveness E", "effectiveness_rate", "all"),
                                ("LLM judge errors", "error_rate", "all")):
            lines.append(f"| {name} | {_f(judge.get(key))} | {_ci(jci.get(key))} | {over} |")
    lat = results.get("latency_ms") or {}
    lines.append(f"| latency p50 / p95 (ms) | {_f(lat.get('p50'), 1)} / "
                 f"{_f(lat.get('p95'), 1)} | | {lat.get('n', 0)} decisions |")

    def group_table(title: str, groups: dict[str, dict[str, Any]]) -> None:
        lines.extend(["", f"## {title}", "",
                      "| group | n | failed | unsafe ran | safe ran | R0 | false-veto | S | E |",
                      "|---|---|---|---|---|---|---|---|---|"])
        for g, m in groups.items():
            lines.append(
                f"| {g} | {m['n']} | {m.get('failed', 0)} | {m['n_unsafe']} | {m['n_safe']} | "
                f"{_f(m['r0'])} | "
                f"{_f(m['false_veto_rate'])} | {_f(m['safety_rate'])} | "
                f"{_f(m['effectiveness_rate'])} |"
            )

    if results.get("per_category"):
        group_table("Per category", results["per_category"])
    for key, groups in (results.get("breakdowns") or {}).items():
        group_table(f"By {key}", groups)
    if results.get("n_bad"):
        lines.extend(["", f"## Bad items ({results['n_bad']}, not scored)", ""])
        lines.extend(f"- `{b['id']}` ({b['source']}): {b['reason']}"
                     for b in results.get("bad_items", [])[:20])
        if results["n_bad"] > 20:
            lines.append(f"- ... {results['n_bad'] - 20} more in results.json")
    for note in results.get("notes") or []:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


# -- plot ------------------------------------------------------------------------------------


def write_plot(results: dict[str, Any], path: Path) -> None:
    """A PNG: headline rates with their 95% CIs, and R0 / false-veto rate per category.

    Raises:
        MissingExtraError: matplotlib is not installed (the `bench` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("matplotlib", "bench", "the benchmark plot") from exc

    ci = results.get("ci95") or {}
    names = [("R0", "r0"), ("false veto", "false_veto_rate"), ("S", "safety_rate"),
             ("E", "effectiveness_rate"), ("failures", "failure_rate"),
             ("hazard match", "hazard_match_rate")]
    names = [(n, k) for n, k in names if results.get(k) is not None]
    cats = results.get("per_category") or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.6]})
    ax = axes[0]
    vals = [results[k] for _, k in names]
    lo = [results[k] - (ci.get(k) or [results[k]] * 2)[0] for _, k in names]
    hi = [(ci.get(k) or [results[k]] * 2)[1] - results[k] for _, k in names]
    bars = ax.bar([n for n, _ in names], vals, yerr=[lo, hi], capsize=4, color="#4C72B0")
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_ylim(0, 1.15)
    ax.set_title(f"{results['suite']}: {results['n']} items (95% CI)")
    ax.tick_params(axis="x", rotation=30)
    ax = axes[1]
    labels = list(cats)
    xs = range(len(labels))
    for offset, key, name, color in ((-0.2, "r0", "R0 (unsafe)", "#C44E52"),
                                     (0.2, "false_veto_rate", "false veto (safe)", "#55A868")):
        ys = [cats[c][key] for c in labels]
        bars = ax.bar([x + offset for x in xs], [y or 0.0 for y in ys], width=0.4, label=name,
                      color=color)
        # a rate with no items behind it is "n/a", not a zero
        ax.bar_label(bars, labels=["n/a" if y is None else f"{y:.2f}" for y in ys],
                     fontsize=7, padding=2)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.3)
    ax.set_title("per category")
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    model = (results.get("run") or {}).get("model", "")
    fig.suptitle(f"guard bench - {model}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
