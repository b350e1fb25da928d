"""The guard's own overhead: `Guard.check` wall time against a bare `model.generate` on the same
inputs, same model, same run, interleaved repetitions.

    python -m guard.bench.overhead                       # builds a tiny Qwen2.5-VL model
    python -m guard.bench.overhead --model DIR --reps 100 --max-new-tokens 32 --out R.json

Three timings per repetition, in rotating order so drift hits them alike:
  generate  `model.generate(**inputs)` on inputs built once beforehand (the bare baseline);
  pipeline  build inputs (chat template, image processor) + generate + decode: what any
            script that calls the model by hand does;
  check     `Guard.check(frame, proposal)`: resize, prompt, worker-thread handoff, deadline,
            parse, policy, audit write (to a real file, flushed per record).
Reported: median and p95 of each, and of the paired differences check - generate (everything
the guard adds, including input building) and check - pipeline (the guard layer on top of the
model call). A fourth timing, `check_no_model`, runs the same check with the scripted backend
replaying the model's own answer: the guard layer's cost without a model's CPU contention
(on a 2-core machine, the worker thread's and the main thread's OpenMP pools compete in the
interleaved model timings, which adds noise of about a millisecond to check - pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kitchen_towel_on_stove.jpg"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "p95": _pct(xs, 0.95), "min": min(xs)}


def run(model: str, reps: int, max_new_tokens: int, image: Path, threads: int) -> dict[str, Any]:
    import torch

    from guard.backends.base import JudgeRequest
    from guard.config import GuardConfig
    from guard.core import Guard
    from guard.imaging import fit_max_pixels
    from guard.types import ActionProposal, Frame

    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="guard-overhead-"))
    config = GuardConfig().with_overrides(**{
        "model.backend": "transformers", "model.id": model,
        "model.max_new_tokens": max_new_tokens, "audit.path": str(tmp / "audit.jsonl"),
        "policy.deadline_ms": 60_000, "policy.max_frame_age_ms": None,
        # Every repetition judges the same frame: with the KV caches on, the check would reuse
        # its prefix and skip work the bare generate does (guard.bench.latency measures that).
        "model.prefix_cache": False, "model.frame_cache": 0,
    })
    guard = Guard(config)
    backend: Any = guard.backend  # the transformers backend: its model and input builder
    frame = Frame.from_path(image)
    proposal = ActionProposal(name="stove_on", description="turn on the stove")
    pil = fit_max_pixels(frame.image, config.image.max_pixels)
    prompt = guard._template.render(proposal.as_text(guard.action_format), (pil,))
    gen_cfg = backend._generation_config_for(max_new_tokens)

    def bare_generate(inputs: dict[str, Any]) -> Any:
        with torch.inference_mode():
            return backend.model.generate(**inputs, generation_config=gen_cfg)

    prebuilt = backend._to_device(backend.inputs(prompt))

    def t_generate() -> float:
        t = time.perf_counter()
        bare_generate(prebuilt)
        return time.perf_counter() - t

    def t_pipeline() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            inputs = backend._to_device(backend.inputs(prompt))
        out = bare_generate(inputs)
        backend.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return time.perf_counter() - t

    def t_check() -> float:
        t = time.perf_counter()
        guard.check(frame, proposal)
        return time.perf_counter() - t

    fns = {"generate": t_generate, "pipeline": t_pipeline, "check": t_check}
    for fn in fns.values():  # warm-up: first calls allocate and compile kernels
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for i in range(reps):
        rot = order[i % 3 :] + order[: i % 3]
        for name in rot:
            times[name].append(fns[name]() * 1000.0)
    n_tokens = int(bare_generate(prebuilt).shape[1] - prebuilt["input_ids"].shape[1])
    answer = backend.judge(JudgeRequest(prompt=prompt, max_new_tokens=max_new_tokens)).text
    guard.close()

    # The guard layer alone: the same check, the model replaced by its recorded answer.
    from guard.backends.scripted import ScriptedBackend

    replay = Guard(config, backend=ScriptedBackend.answering(answer))
    for _ in range(5):
        replay.check(frame, proposal)
    times["check_no_model"] = []
    for _ in range(reps):
        t = time.perf_counter()
        replay.check(frame, proposal)
        times["check_no_model"].append((time.perf_counter() - t) * 1000.0)
    replay.close()
    diff_gen = [c - g for c, g in zip(times["check"], times["generate"], strict=True)]
    diff_pipe = [c - p for c, p in zip(times["check"], times["pipeline"], strict=True)]
    return {
        "model": model,
        "reps": reps,
        "max_new_tokens": max_new_tokens,
        "generated_tokens": n_tokens,
        "image": str(image),
        "image_size_judged": list(pil.size),
        "threads": threads,
        "ms": {k: summary(v) for k, v in times.items()},
        "overhead_ms": {
            "check_minus_generate": summary(diff_gen),
            "check_minus_pipeline": summary(diff_pipe),
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guard.bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or hub id (default: build a "
                   "tiny random Qwen2.5-VL in a temp dir)")
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"],
                   help="architecture of the tiny model built when --model is not given")
    p.add_argument("--reps", type=int, default=60, help="repetitions (default 60)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--image", type=Path, default=EXAMPLE)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    model = args.model
    if model is None:
        from guard.tiny import build_tiny_model

        model = str(build_tiny_model(args.arch, tempfile.mkdtemp(prefix="guard-tiny-")))
    result = run(model, args.reps, args.max_new_tokens, args.image, args.threads)
    ms, ov = result["ms"], result["overhead_ms"]
    print(f"model {result['model']}  reps {args.reps}  tokens {result['generated_tokens']}  "
          f"image {result['image_size_judged']}  threads {args.threads}")
    for k in ("generate", "pipeline", "check", "check_no_model"):
        print(f"  {k:14s} median {ms[k]['median']:8.2f} ms   p95 {ms[k]['p95']:8.2f} ms")
    for k, v in ov.items():
        print(f"  {k:21s} median {v['median']:7.2f} ms   p95 {v['p95']:7.2f} ms")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
