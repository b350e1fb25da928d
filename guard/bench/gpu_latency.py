"""The judge's latency on a CUDA GPU at full model size: Qwen2.5-VL-7B and Qwen3-VL-4B shapes.

Builds a model of each preset's real architecture (``FULL_SIZE`` in `guard.bench.latency`, from
the published configs) with random bf16 weights on the GPU (timing needs no trained weights),
saves it to local disk (``--work``; by default a new temporary folder, left in place), rigs it
to answer verdict first (`guard.bench.verdict_rig`) and runs `guard.bench.latency`'s ``camera``
scenario (640 x 480 frames, the consequence_v1 prompt) for each backend of ``--backends``:
``transformers`` (bf16) and ``transformers-4bit`` (bitsandbytes, quantized on load) by default.
For each preset it prints a table of medians (p95) in ms and writes ``PRESET.json`` and
``PRESET.md`` to ``--out``. Exits 2 when no CUDA device is visible.

    python -m guard.bench.gpu_latency --out runs/gpu-latency                  # both presets
    python -m guard.bench.gpu_latency --presets qwen3-vl-4b --reps 16 --out runs/gpu-latency

``--presets`` takes a comma list; one preset per call keeps each call shorter. Needs a CUDA build
of torch (README, "GPU install (CUDA)"), the ``quant`` extra (bitsandbytes) for the 4-bit
backend, and local disk for the saved weights (about 17 GB for the 7 B preset in bf16). For
reading the figures: prefill of 300 tokens of a 7 B model is about 6 ms of compute on an H200,
and one bf16 decode step of a 7 B model cannot take less than about 3 ms there (4.8 TB/s of
memory bandwidth).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from guard.bench.latency import FULL_SIZE, SCENARIOS, build_model, format_table, run_scenario

    p = argparse.ArgumentParser(prog="python -m guard.bench.gpu_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="qwen2.5-vl-7b,qwen3-vl-4b",
                   help=f"comma list of {', '.join(FULL_SIZE)}")
    p.add_argument("--backends", default="transformers,transformers-4bit")
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--rationale-tokens", type=int, default=64)
    p.add_argument("--work", type=Path, default=None,
                   help="local disk for the saved weights (default: a temp dir)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    if not torch.cuda.is_available():
        print("gpu_latency: no CUDA device", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="guard-gpu-latency-"))
    for preset in args.presets.split(","):
        t0 = time.perf_counter()
        model = build_model(preset, FULL_SIZE[preset][0], work / preset, device="cuda",
                            dtype="bfloat16")
        built_s = time.perf_counter() - t0
        torch.cuda.empty_cache()
        result: dict[str, Any] = run_scenario(
            str(model), SCENARIOS["camera"], args.backends.split(","), args.reps,
            1 + args.rationale_tokens, threads=torch.get_num_threads(), device="cuda",
            work=work, warmup=2,
        )
        result.update(preset=preset, gpu=torch.cuda.get_device_name(0), build_s=built_s,
                      total_s=time.perf_counter() - t0, reps=args.reps,
                      rationale_tokens=args.rationale_tokens)
        table = format_table(result)
        head = (f"## {preset} on {result['gpu']}: camera 640x480, consequence_v1, "
                f"{args.reps} reps; ms, median (p95)\n")
        print(head + "\n" + table)
        (args.out / f"{preset}.json").write_text(json.dumps(result, indent=2))
        (args.out / f"{preset}.md").write_text(head + "\n" + table + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
