"""`guard export onnx`: export a Qwen-VL judge for the onnx backend (ONNX Runtime).

    guard export onnx --model DIR --out ONNX_DIR --image-size 640x480
    guard check --backend onnx --model ONNX_DIR --image frame.jpg --action "turn on the stove"

The vision graph takes frames of exactly --image-size (the onnx backend resizes to it); the
decoder graph has dynamic lengths and a KV cache. The export ends with a parity check against
PyTorch on one random frame (largest logit difference, verdict agreement), printed and kept in
the folder's guard_onnx.json.
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = sub.add_parser("onnx", help="ONNX Runtime graphs (vision tower + decoder with KV cache)",
                       description="Export a Qwen2.5-VL / Qwen3-VL model for the onnx backend.")
    o.add_argument("--model", required=True, metavar="DIR", help="model folder (or hub id)")
    o.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    o.add_argument("--image-size", default="640x480", metavar="WxH",
                   help="camera resolution the vision graph takes (default 640x480)")
    o.add_argument("--adapter", default=None, metavar="PATH",
                   help="PEFT (LoRA) adapter to merge into the weights before exporting")
    o.add_argument("--dtype", default="fp32", metavar="fp32|fp16",
                   help="float type of the weights, activations and KV cache (default fp32; "
                   "fp16 halves the size, for CUDA: ONNX Runtime's CPU provider lacks "
                   "float16 kernels for some operators)")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    o.add_argument("--no-check", action="store_true",
                   help="skip the parity check against PyTorch")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guard.backends.onnx_export import export_onnx, parse_dtype, parse_image_size

    size = parse_image_size(args.image_size)
    dtype = parse_dtype(args.dtype)
    result = export_onnx(args.model, args.out, size, adapter=args.adapter, opset=args.opset,
                         check=not args.no_check, dtype=dtype)
    meta = result.meta
    summary = {
        "out": str(result.out),
        "model_type": meta["model_type"],
        "image_size": meta["image_size"],
        "image_tokens": meta["n_image_tokens"],
        "dtype": meta["dtype"],
        "seconds": round(result.seconds, 1),
        "check": meta.get("check"),
    }
    print(json.dumps(summary))
    check = meta.get("check")
    return 1 if check and check.get("verdict_agrees") is False else 0
