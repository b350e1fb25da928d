"""Does safety hold after quantization? R0 and false-veto rate of one model as fp32, bitsandbytes
8-bit and 4-bit, and ONNX Runtime (float32 and float16 exports), on the synthetic world's test
splits.

    guard world generate --split test_iid --n 512 --seed 1000 --out data/test_iid
    guard world generate --split test_ood --n 512 --seed 1000 --out data/test_ood
    python -m guard.bench.quant_safety --model guard/models/hazardworld-small \\
        --data data/test_iid --data data/test_ood --out runs/quant

The judge sees each item as the model was trained to read it: the prompt template named in the
model folder's ``training_run_config.yaml`` (``data.template``; else the config's) and the
item's proposal as every front end and training render it (``--action-text proposal``, the
default: ``phrase (tool: name)``, `guard.prompting.action`). ``--action-text query`` sends the
phrase alone, for models trained before training rendered proposals that way.

Each (split, variant) is an ordinary benchmark run (`guard.bench.runner.run_bench`, the
hazardworld suite) in ``OUT/SPLIT/VARIANT``, so every number means what ``guard bench`` means
by it (r0: unsafe items whose risk was not identified; false_veto_rate: safe items vetoed) and
comes with its bootstrap interval. Beside them: the share of items whose verdict equals the
fp32 model's (the quantization's own effect, free of label noise) and the median decision time.
The ONNX variants are exported once, at the size of the split's frames. Default variants: fp32,
8bit, 4bit, onnx (add onnx-fp16 with --variants). ``OUT/table.md`` and
``OUT/table.json`` hold the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VARIANTS = ("fp32", "8bit", "4bit", "onnx", "onnx-fp16")
ACTION_TEXTS = ("query", "proposal")


def _bare_action_guard(guard_cls: Any) -> Any:
    """A Guard whose judge reads a proposal's description alone (the item's action phrase)."""

    class BareActionGuard(guard_cls):  # type: ignore[misc]
        def check(self, frames: Any, proposal: Any, **kw: Any) -> Any:
            text = proposal.description.strip() or proposal.name
            bare = proposal.model_copy(update={"name": text, "description": ""})
            return super().check(frames, bare, **kw)

    return BareActionGuard


def _frame_size(suite: Any) -> tuple[int, int]:
    from PIL import Image

    for item in suite.items:
        if item.image is not None:
            with Image.open(item.image) as im:
                return int(im.size[0]), int(im.size[1])
    raise SystemExit("the split has no images: the ONNX variant needs the frame size")


def variant_config(base: Any, variant: str, model: str, out: Path, suite: Any) -> Any:
    """The guard config of one variant."""
    overrides: dict[str, Any] = {
        "model.id": model, "model.backend": "transformers", "model.quantization": "none",
    }
    if variant == "fp32":
        overrides["model.dtype"] = "float32"
    elif variant in ("8bit", "4bit"):
        overrides["model.quantization"] = variant
    elif variant in ("onnx", "onnx-fp16"):
        from guard.backends.onnx_export import export_onnx

        w, h = _frame_size(suite)
        dtype = "float16" if variant == "onnx-fp16" else "float32"
        folder = out / f"{variant}-{w}x{h}"
        if not (folder / "guard_onnx.json").is_file():
            export_onnx(model, folder, (w, h), adapter=base.model.adapter, dtype=dtype)
        overrides.update({"model.backend": "onnx", "model.id": str(folder),
                          "model.adapter": None})
    else:
        raise SystemExit(f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return base.with_overrides(**overrides)


def _backend(config: Any, threads: int | None) -> Any:
    """The variant's backend; ONNX Runtime gets `threads` intra-op threads (torch's are set
    once for the process)."""
    from guard.backends import create_backend

    if config.model.backend != "onnx" or threads is None:
        return create_backend(config)
    from guard.backends.onnx_backend import OnnxBackend

    m = config.model
    return OnnxBackend(m.id, device=m.device, max_new_tokens=m.max_new_tokens,
                       prefix_cache=m.prefix_cache, frame_cache=m.frame_cache, threads=threads)


def _verdicts(run_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    path = run_dir / "per_item.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("scored"):
                out[rec["id"]] = rec["decision"]["verdict"]
    return out


def run(model: str, data: Sequence[Path], out: Path, variants: Sequence[str], *,
        limit: int | None, base: Any, n_boot: int = 500,
        action_text: str = "proposal", threads: int | None = None) -> list[dict[str, Any]]:
    """Benchmark each variant on each split; the table's rows."""
    from guard.bench.runner import run_bench
    from guard.bench.suites import load_suite
    from guard.core import Guard

    if action_text not in ACTION_TEXTS:
        raise SystemExit(f"--action-text {action_text!r}: expected one of "
                         f"{', '.join(ACTION_TEXTS)}")
    guard_cls = _bare_action_guard(Guard) if action_text == "query" else Guard

    rows = []
    for split_dir in data:
        suite = load_suite("hazardworld", split_dir)
        split = (split_dir.parent if split_dir.is_file() else split_dir).name
        reference: dict[str, str] | None = None
        for variant in variants:
            run_dir = out / split / variant
            config = variant_config(base, variant, model, out, suite).with_overrides(**{
                "policy.max_frame_age_ms": None, "audit.path": str(run_dir / "audit.jsonl"),
            })
            with guard_cls(config, backend=_backend(config, threads)) as guard:
                res = run_bench(suite, guard, run_dir, limit=limit, plot=False, n_boot=n_boot,
                                progress=False)
            verdicts = _verdicts(run_dir)
            if reference is None:
                reference = verdicts
            shared = [k for k in verdicts if k in reference]
            agree = (sum(verdicts[k] == reference[k] for k in shared) / len(shared)
                     if shared else None)
            ci = res.get("ci95") or {}
            rows.append({
                "split": split, "variant": variant, "n": res["n"], "r0": res["r0"],
                "r0_ci95": ci.get("r0"), "false_veto_rate": res["false_veto_rate"],
                "false_veto_rate_ci95": ci.get("false_veto_rate"),
                "failure_rate": res.get("failure_rate"),
                "agrees_with_first": agree, "latency_p50_ms": res["latency_ms"]["p50"],
                "run_dir": str(run_dir),
            })
    return rows


def _fmt(x: Any, ci: Any = None) -> str:
    if x is None:
        return "n/a"
    text = f"{x:.3f}"
    if ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def format_table(rows: Sequence[dict[str, Any]], first: str) -> str:
    lines = [
        f"| split | variant | n | R0 [95% CI] | false-veto rate [95% CI] | failures | "
        f"verdict = {first} | p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['split']} | {r['variant']} | {r['n']} | {_fmt(r['r0'], r['r0_ci95'])} | "
            f"{_fmt(r['false_veto_rate'], r['false_veto_rate_ci95'])} | "
            f"{_fmt(r['failure_rate'])} | {_fmt(r['agrees_with_first'])} | "
            f"{r['latency_p50_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guard.bench.quant_safety", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (trained small model)")
    p.add_argument("--data", required=True, action="append", type=Path,
                   help="a split folder written by 'guard world generate' (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--variants", default=",".join(VARIANTS[:4]),
                   help=f"comma list of {', '.join(VARIANTS)} (the first is the reference)")
    p.add_argument("--config", default=None, help="guard config YAML (policy, prompt, ...)")
    p.add_argument("--adapter", default=None, help="PEFT adapter on the model")
    p.add_argument("--template", default=None,
                   help="prompt template (default: data.template of the model folder's "
                   "training_run_config.yaml, else the config's)")
    p.add_argument("--action-text", default="proposal", choices=ACTION_TEXTS,
                   help="what the judge reads as the action: the guard's proposal text "
                   "'phrase (tool: name)' (proposal, as every front end and training render "
                   "it; default) or the item's phrase alone (query, for models trained on "
                   "bare phrases)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each split")
    p.add_argument("--deadline-ms", type=float, default=600_000,
                   help="per-check deadline (default 600000: CPU runs are slow, not failed)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and ONNX Runtime threads (default 1: steady on a shared CPU; "
                   "0 leaves both at their defaults)")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    threads = args.threads if args.threads > 0 else None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from guard.config import load_config
    from guard.prompting import trained_template

    overrides: dict[str, Any] = {
        "policy.deadline_ms": args.deadline_ms, "model.adapter": args.adapter,
    }
    template = args.template or trained_template(args.model)
    if template is not None:
        overrides["prompt.template"] = template
    base = load_config(args.config).with_overrides(**overrides)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.model, args.data, args.out, variants, limit=args.limit, base=base,
               n_boot=args.n_boot, action_text=args.action_text, threads=threads)
    table = format_table(rows, variants[0])
    print(table)
    (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "table.json").write_text(
        json.dumps({"model": args.model, "variants": variants, "template": template,
                    "action_text": args.action_text, "limit": args.limit,
                    "threads": threads, "rows": rows},
                   indent=2) + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
