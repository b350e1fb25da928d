"""The benchmark runner: judge every item with a `Guard`, N at a time, resumably.

    data = load_suite("hazardworld", "data/test_ood")
    with Guard(config) as guard:
        results = run_bench(data, guard, Path("runs/r1"), concurrency=8)

Outputs in the run folder:
    per_item.jsonl   one record per item as it finishes (decision, scores, judge), appended and
                     flushed one by one, so an interrupted run loses only the items in flight
    run.json         what produced per_item.jsonl; a re-run with another model or policy is
                     refused instead of mixing the two
    results.json     metrics (guard.bench.metrics), with bootstrap CIs
    results.md       the same as markdown tables
    results.png      the plot
    audit.jsonl      the guard's audit log (unless the config points elsewhere)

Concurrency: a thread pool keeps `concurrency` items in flight; each thread runs `Guard.check`,
which hands the model call to the guard's own pool (`policy.max_inflight` workers, raised to at
least `concurrency`). With the openai backend that is `concurrency` HTTP requests in flight, which
is what keeps a vLLM server (or a fleet behind one endpoint) busy: vLLM batches concurrent
requests itself (continuous batching). The transformers backend serialises calls on one model, so
more than one in flight there only adds queueing (and deadline pressure).

Resumption: a re-run skips items whose check ran (status ok) in per_item.jsonl; items whose
check did not run (the judge was down, a timeout, an unparseable answer), items that were in
flight when the run stopped, and bad items found while running are tried again, and their old
records are dropped from per_item.jsonl first.

Failed checks are never scored as measurements: results count them (`failed`,
`failed_by_status`) and compute every rate over the checks that ran (guard.bench.metrics).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guard.bench.items import DEFAULT_MAX_FAILED_SHARE, BenchItem, SuiteData, stratified_limit
from guard.bench.judges import LLMJudge, structured_scores
from guard.bench.oracle import OracleBackend, proposal_for
from guard.bench.report import build_results, markdown_table, write_plot, write_results
from guard.errors import InvalidInputError, UsageError

if TYPE_CHECKING:
    from guard.bench.semantic import SemanticMatcher
    from guard.config import GuardConfig
    from guard.core import Guard

log = logging.getLogger("guard.bench")

PER_ITEM_FILE = "per_item.jsonl"
RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
PLOT_FILE = "results.png"


# -- per_item.jsonl --------------------------------------------------------------------------


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write) so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def read_per_item(path: Path) -> dict[str, dict[str, Any]]:
    """per_item.jsonl records by id (the last record of an id wins; torn lines are ignored)."""
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                records[rec["id"]] = rec
    return records


def check_ran(record: dict[str, Any]) -> bool:
    """Whether a per_item.jsonl record holds a decision whose check ran (status ok): the only
    records a resumed run keeps."""
    decision = record.get("decision")
    return bool(record.get("scored")) and isinstance(decision, dict) and (
        decision.get("status") == "ok")


def _write_records(path: Path, records: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.part")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records.values():
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)


# -- what produced a run ---------------------------------------------------------------------


def decision_settings(config: GuardConfig) -> dict[str, Any]:
    """The config fields that change decisions, flattened to dotted keys. Not the audit path,
    the device, or policy.max_inflight: a resumed run may use another concurrency or machine."""
    data = config.model_dump(mode="json")
    data.pop("audit", None)
    data["model"].pop("device", None)
    data["policy"].pop("max_inflight", None)
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = node

    walk("", data)
    return flat


def config_fingerprint(config: GuardConfig) -> str:
    """A short hash of `decision_settings`."""
    blob = json.dumps(decision_settings(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _check_run_file(out: Path, identity: dict[str, Any], fresh: bool) -> None:
    """Refuse to resume a run folder that another model, config, suite or judge wrote."""
    per_item, run_file = out / PER_ITEM_FILE, out / RUN_FILE
    if fresh:
        for p in (per_item, run_file):
            p.unlink(missing_ok=True)
    elif per_item.is_file() and run_file.is_file():
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except ValueError:
            before = {}
        now_settings, old_settings = identity["settings"], before.get("settings") or {}
        diff = [(k, before.get(k), v) for k, v in identity.items()
                if k != "settings" and before.get(k) != v]
        diff += [(k, old_settings.get(k, "(absent)"), now_settings.get(k, "(absent)"))
                 for k in sorted(set(now_settings) | set(old_settings))
                 if old_settings.get(k, "(absent)") != now_settings.get(k, "(absent)")]
        if diff:
            shown = "; ".join(f"{k}: {a!r}, now {b!r}" for k, a, b in diff[:3])
            raise UsageError(
                f"{out}: per_item.jsonl was written by another run ({shown}); use --fresh "
                "to start over or another --out"
            )
    run_file.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")


# -- one item --------------------------------------------------------------------------------


def evaluate_item(
    guard: Guard, item: BenchItem, judge: LLMJudge | None = None
) -> dict[str, Any]:
    """Judge one item; the per_item.jsonl record. An image that does not decode makes a bad
    record (scored false), never a decision."""
    from PIL import Image

    from guard.types import Frame

    base = {"id": item.id, "suite": item.suite, "label": item.label,
            "category": item.category, "query": item.query,
            "image": str(item.image) if item.image is not None else None}
    frames: list[Frame] = []
    if item.image is not None:
        image_cfg = guard.config.image
        try:
            frames.append(Frame.from_path(
                item.image, max_input_pixels=image_cfg.max_input_pixels,
                max_file_bytes=image_cfg.max_file_bytes,
            ))
        except (InvalidInputError, ValueError) as exc:
            return {**base, "scored": False, "bad": str(exc).splitlines()[0][:300],
                    "source": str(item.image.name)}
    # The oracle answers by item id: tell it which item this check is for.
    checking: AbstractContextManager[object] = (
        guard.backend.checking(item) if isinstance(guard.backend, OracleBackend)
        else nullcontext()
    )
    with checking:
        decision = guard.check(frames or None, proposal_for(item)).model_dump(mode="json")
    record: dict[str, Any] = {**base, "scored": True, "decision": decision,
                              "scores": structured_scores(item, decision), "meta": item.meta}
    if judge is not None:
        images = tuple(Image.fromarray(f.image) for f in frames)
        record["judge"] = judge.judge(item, decision, images)
    return record


def _evaluate_safely(guard: Guard, item: BenchItem, judge: LLMJudge | None) -> dict[str, Any]:
    try:
        return evaluate_item(guard, item, judge)
    except Exception as exc:  # a harness bug must not end a long run: the item is listed bad
        log.exception("bench: item %s failed", item.id)
        return {"id": item.id, "suite": item.suite, "scored": False, "source": item.id,
                "bad": f"harness error: {type(exc).__name__}: {exc}"[:300]}


# -- the run ---------------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    from tqdm import tqdm

    # disable=None: a bar on a terminal, silence in logs and CI
    return tqdm(total=total, desc=desc, unit="item", disable=None if enabled is None
                else not enabled, dynamic_ncols=True)


def _execute(
    guard: Guard,
    pending: Sequence[BenchItem],
    judge: LLMJudge | None,
    concurrency: int,
    per_item: Path,
    bar: Any,
) -> None:
    """Keep `concurrency` items in flight; append each record as it finishes."""
    items: Iterator[BenchItem] = iter(pending)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="guard-bench")
    inflight: set[Future[dict[str, Any]]] = set()
    interrupted = False
    try:
        with per_item.open("a", encoding="utf-8") as fh:
            while True:
                # a short queue beyond the workers: no idle worker, and little to cancel
                while len(inflight) < 2 * concurrency:
                    item = next(items, None)
                    if item is None:
                        break
                    inflight.add(pool.submit(_evaluate_safely, guard, item, judge))
                if not inflight:
                    return
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                inflight -= done
                # Every finished record is written before an interrupt from a worker is
                # re-raised: several may finish at once, and none of them is judged again.
                raised = [exc for fut in done if (exc := fut.exception()) is not None]
                for fut in done:
                    if fut.exception() is None:
                        fh.write(json.dumps(fut.result(), ensure_ascii=False) + "\n")
                        fh.flush()
                        bar.update(1)
                if raised:
                    raise raised[0]
    except BaseException:
        interrupted = True
        raise
    finally:
        for fut in inflight:
            fut.cancel()
        # after an interrupt, do not wait for checks still running (each ends by its deadline)
        pool.shutdown(wait=not interrupted, cancel_futures=True)


def run_bench(
    suite: SuiteData,
    guard: Guard,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    concurrency: int = 1,
    judge: LLMJudge | None = None,
    semantic: SemanticMatcher | None = None,
    fresh: bool = False,
    progress: bool | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    plot: bool = True,
    run_info: dict[str, Any] | None = None,
    max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
) -> dict[str, Any]:
    """Run (or resume) a benchmark and write its outputs.

    Args:
        suite: The loaded suite.
        guard: The guard under test (its config should have `policy.max_frame_age_ms` null,
            and `policy.require_frame` false for text-only suites; the CLI sets both).
        out_dir: The run folder (created).
        limit: Only `limit` items, safe and unsafe in the suite's proportion
            (`stratified_limit`: the same items on every run).
        concurrency: Items in flight at once.
        judge: An LLM judge to rate each decision as a free-form answer, or None.
        semantic: A semantic hazard matcher, or None.
        fresh: Discard an earlier per_item.jsonl instead of resuming it.
        progress: Progress bar on/off; None shows one on a terminal only.
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.
        plot: Write results.png (needs matplotlib).
        run_info: Extra facts for results.json's "run" section.
        max_failed_share: Above this share of failed checks, results.json says
            `failed_over_limit` (the CLI then exits 1).

    Returns:
        The results (also written to results.json).

    Raises:
        UsageError: the run folder holds results of a different model, policy or suite.
        KeyboardInterrupt: after writing partial results (complete: false).
    """
    if concurrency < 1:
        raise UsageError(f"--concurrency {concurrency}: must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected = stratified_limit(suite.items, limit)
    identity = {
        "suite": suite.name,
        "model": guard.backend.model_id,
        "judge": judge.model_id if judge else None,
        "judge_prompt": judge.prompts.name if judge else None,
        "settings": decision_settings(guard.config),
    }
    _check_run_file(out, identity, fresh)
    per_item = out / PER_ITEM_FILE
    _repair_tail(per_item)
    records = read_per_item(per_item)
    # Only checks that ran are results; the rest (the judge was down, a timeout, a bad item)
    # are judged again, and their old records go so per_item.jsonl holds one truth per item.
    kept = {k: r for k, r in records.items() if check_ran(r)}
    retried = sum(1 for i in selected if i.id in records and i.id not in kept)
    if len(kept) != len(records):
        _write_records(per_item, kept)
    pending = [i for i in selected if i.id not in kept]
    run = {
        "model": guard.backend.model_id,
        "backend": guard.config.model.backend,
        "policy": guard.policy_id,
        "prompt_template": guard.template_name,
        "config_fingerprint": config_fingerprint(guard.config),
        "judge": identity["judge"],
        "judge_prompt": identity["judge_prompt"],
        "semantic": None,
        "concurrency": concurrency,
        "limit": limit,
        "seed": seed,
        "bootstrap": n_boot,
        "resumed_items": len(selected) - len(pending),
        "retried_items": retried,
        "max_failed_share": max_failed_share,
        **(run_info or {}),
    }
    bar = _progress(len(pending), f"bench {suite.name}", progress)
    t0 = time.monotonic()
    try:
        _execute(guard, pending, judge, concurrency, per_item, bar)
    except KeyboardInterrupt:
        bar.close()
        records = read_per_item(per_item)
        run["wall_s"] = time.monotonic() - t0
        partial = build_results(suite, selected, records, run=run, seed=seed, n_boot=n_boot,
                                complete=False, max_failed_share=max_failed_share)
        write_results(partial, out / RESULTS_FILE)
        (out / TABLE_FILE).write_text(markdown_table(partial), encoding="utf-8")
        raise
    bar.close()
    wall = time.monotonic() - t0
    run["wall_s"] = wall
    run["items_per_s"] = len(pending) / wall if pending and wall > 0 else None
    records = read_per_item(per_item)
    if semantic is not None:
        run["semantic"] = {"model": semantic.model_id, "threshold": semantic.threshold}
        apply_semantic(semantic, selected, records)
        _write_records(per_item, records)
    results = build_results(suite, selected, records, run=run, seed=seed, n_boot=n_boot,
                            max_failed_share=max_failed_share)
    write_results(results, out / RESULTS_FILE)
    (out / TABLE_FILE).write_text(markdown_table(results), encoding="utf-8")
    if plot:
        write_plot(results, out / PLOT_FILE)
    return results


def apply_semantic(
    matcher: SemanticMatcher,
    items: Sequence[BenchItem],
    records: dict[str, dict[str, Any]],
) -> None:
    """Add hazard_similarity and hazard_matched to the scores of scored unsafe items that have
    a reference hazard text (in place). Not identified means not matched."""
    from guard.bench.semantic import decision_hazard_texts

    todo = [(i, records[i.id]) for i in items
            if i.unsafe and i.hazard_text and records.get(i.id, {}).get("scored")]
    sims = matcher.similarity(
        [i.hazard_text for i, _ in todo],
        [decision_hazard_texts(r["decision"]) for _, r in todo],
    )
    for (_, rec), sim in zip(todo, sims, strict=True):
        scores = rec["scores"]
        scores["hazard_similarity"] = sim
        scores["hazard_matched"] = bool(
            scores["risk_identified"] and sim is not None and sim >= matcher.threshold
        )
