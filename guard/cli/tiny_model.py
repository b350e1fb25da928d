"""`guard tiny-model`: write a tiny random-weight Qwen2.5-VL or Qwen3-VL model, tokenizer and
image processor that `--model DIR` loads, for smoke tests and offline development.

    guard tiny-model --arch qwen3_vl --out /tmp/tiny-qwen3 --seed 0
"""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, choices=["qwen2_5_vl", "qwen3_vl"],
                   help="architecture to build")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same weights)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guard.tiny import build_tiny_model

    out = build_tiny_model(args.arch, args.out, seed=args.seed)
    print(out)
    return 0
