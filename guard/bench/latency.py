"""Latency of the judge: time to verdict, to a full answer, vision, prefill, decode speed, batches
and caches, per backend, against a bare transformers ``generate`` on the same inputs in the
same run.

    python -m guard.bench.latency                          # small random model, all scenarios
    python -m guard.bench.latency --model DIR --backends transformers,onnx,transformers-4bit \\
        --scenarios camera --reps 30 --out latency.json

Without ``--model`` a random model of ``--preset`` size is built (``small``: the 5 M-parameter
Qwen2.5-VL shape of our CPU probe, guard/world/README.md) and rigged to answer verdict first
(`guard.bench.verdict_rig`): a random model's first token is rarely a verdict word, and the
engine then decodes the whole answer, which is not the path to time. A trained model needs no rig.

Scenarios: ``world`` is what the small trained models judge (112 x 112 synthetic frames, the
compact prompt their training configs use); ``world_v1`` the same frames under the default
consequence_v1 prompt (long system part, few image tokens); ``camera`` a robot camera (640 x 480,
consequence_v1: the image dominates the prompt).

Measured per backend (``transformers``, ``transformers-8bit``, ``transformers-4bit``, ``onnx``;
ONNX is exported at the scenario's image size), each on a fresh camera frame unless said:
  verdict          time to verdict (rationale off), system prompt cached, new frame
  verdict_warm     another action on the frame just judged (frame cache)
  verdict_nocache  as verdict with the prefix and frame caches off (prefill comparison)
  full             the verdict plus a --rationale-tokens rationale (sync, end-of-answer suppressed)
  four_seq         four actions on one new frame, one after another (frame cache)
  four_batch       the same four as one batch (`judge_batch`)
  bare_full        transformers only: build inputs + ``model.generate`` of the same length
  bare_first       transformers only: build inputs + ``generate(max_new_tokens=1)``
  pixels_fast      transformers only: the image processor alone on a new frame, through
                   `guard.backends.qwen_pixels` (what the backends use)
  pixels_stock     the same through the stock image processor
Repetitions interleave backends and measures in rotating order, so drift hits all alike.
On a shared CPU, use ``--threads 1``: OpenMP threads of two-thread runs wait on each other
behind other processes and turn milliseconds into seconds at random.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kitchen_towel_on_stove.jpg"
ACTIONS = (
    "turn on the stove",
    "hand me the knife",
    "wipe the stove top",
    "pour water into the glass",
)
TARGETS = {
    "verdict_vs_full": 0.25,  # time to verdict at most this share of a full answer
    "prefix_prefill_speedup": 1.5,  # prefill with the prefix cache at least this much faster
    "four_vs_one": 2.0,  # four proposals on one frame at most this multiple of one
}

# Sizes for `--preset`. "small" is the 5 M-parameter shape our CPU probe trained
# (guard/world/README.md, "What a small model learns").
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {},
    "small": {
        "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
        "intermediate_size": 704, "vision_hidden_size": 128, "vision_depth": 2,
        "vision_heads": 4,
    },
}

# Real architectures' sizes (Qwen2.5-VL-7B-Instruct and Qwen3-VL-4B-Instruct config.json, as
# published; written from the model cards, not downloaded here). Random weights: timing does not
# need trained ones.
FULL_SIZE: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "qwen2.5-vl-7b": (
        "qwen2_5_vl",
        {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
         "rms_norm_eps": 1e-6, "max_position_embeddings": 128000,
         "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                             "mrope_section": [16, 24, 24]}},
        {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
         "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
         "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
         "tokens_per_second": 2, "hidden_act": "silu"},
    ),
    "qwen3-vl-4b": (
        "qwen3_vl",
        {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
         "vocab_size": 151936, "rms_norm_eps": 1e-6, "max_position_embeddings": 262144,
         "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                             "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
        {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
         "out_hidden_size": 2560, "patch_size": 16, "spatial_merge_size": 2,
         "temporal_patch_size": 2, "num_position_embeddings": 2304,
         "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh"},
    ),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    image_size: tuple[int, int]
    template: str


SCENARIOS = {
    "world": Scenario("world", (112, 112), "consequence_compact"),
    "world_v1": Scenario("world_v1", (112, 112), "consequence_v1"),
    "camera": Scenario("camera", (640, 480), "consequence_v1"),
}


def pct(xs: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {"p50": statistics.median(xs), "p95": pct(xs, 0.95), "n": len(xs)}


# -- models ------------------------------------------------------------------------------------


def build_model(preset: str, arch: str, out: Path, *, device: str = "cpu",
                dtype: str = "float32", rig: bool = True) -> Path:
    """A random-weight model folder: a `PRESETS` size (any arch) or a `FULL_SIZE` name.

    Full-size models get the tiny tokenizer (their token ids are remapped to it; the embedding
    keeps the real vocabulary size) and an image processor bounded like the real ones, and are
    initialised on `device` in `dtype` (a 7 B model in float32 on a CPU takes minutes).
    """
    from guard.bench.verdict_rig import rig_verdict_first
    from guard.tiny import build_tiny_model

    if preset in PRESETS:
        path = build_tiny_model(arch, out, max_pixels=1280 * 28 * 28, **PRESETS[preset])  # type: ignore[arg-type]
        if rig:
            from guard.bench.verdict_rig import rig_folder

            rig_folder(path)
        return path

    import torch
    import transformers

    arch = FULL_SIZE[preset][0]
    path = build_tiny_model(arch, out, max_pixels=12_845_056)  # type: ignore[arg-type]
    config = full_size_config(preset, transformers.AutoConfig.from_pretrained(path))
    from guard.backends.transformers_backend import MODEL_CLASSES

    cls = getattr(transformers, MODEL_CLASSES[arch])
    with torch.device(device):
        model = cls._from_config(config, dtype=getattr(torch, dtype))
    if rig:
        rig_verdict_first(model, transformers.AutoTokenizer.from_pretrained(path))
    model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    model.save_pretrained(path)
    del model
    return path


def full_size_config(preset: str, tiny: Any) -> Any:
    """The `FULL_SIZE` config of `preset`, with the special token ids of `tiny` (the tiny
    tokenizer's config) so that the tiny tokenizer drives it."""
    arch, text, vision = FULL_SIZE[preset]
    # Fields derived from the tiny sizes (one layer type per layer) are dropped and rebuilt.
    small = {k: v for k, v in tiny.text_config.to_dict().items()
             if k not in ("layer_types", "max_window_layers", "head_dim")}
    text_cfg = {**small, **text}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        text_cfg[key] = getattr(tiny.text_config, key)
    vision_cfg = {**tiny.vision_config.to_dict(), **vision}
    ids = {k: getattr(tiny, k) for k in ("image_token_id", "video_token_id",
                                        "vision_start_token_id", "vision_end_token_id")}
    return type(tiny)(text_config=text_cfg, vision_config=vision_cfg,
                      tie_word_embeddings=arch == "qwen3_vl", **ids)


# -- measuring ---------------------------------------------------------------------------------


class Frames:
    """Fresh camera frames: the example image at a size, one pixel changed per frame (a new
    frame to every cache, the same scene to the model)."""

    def __init__(self, size: tuple[int, int], image: Path = EXAMPLE) -> None:
        import numpy as np
        from PIL import Image

        self._base = np.asarray(Image.open(image).convert("RGB").resize(size)).copy()
        self._n = 0

    def next(self) -> Any:
        from PIL import Image

        self._n += 1
        a = self._base.copy()
        a[0, 0] = [self._n % 256, (self._n // 256) % 256, 7]
        return Image.fromarray(a)


@dataclass
class Measured:
    wall: dict[str, list[float]] = field(default_factory=dict)
    parts: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, measure: str, wall_ms: float, parts: dict[str, float] | None = None) -> None:
        self.wall.setdefault(measure, []).append(wall_ms)
        for k, v in (parts or {}).items():
            self.parts.setdefault(measure, {}).setdefault(k, []).append(v)


class BackendBench:
    """One backend under measurement."""

    def __init__(self, name: str, backend: Any, template: Any, frames: Frames, tokens: int,
                 bare: bool) -> None:
        self.name, self.backend, self.template, self.frames = name, backend, template, frames
        self.tokens = tokens
        self.bare = bare
        self.m = Measured()
        self._last_frame: Any = None

    def _request(self, action: str, frame: Any, rationale: str) -> Any:
        from guard.backends.base import JudgeRequest

        return JudgeRequest(prompt=self.template.render(action, (frame,)),
                            max_new_tokens=self.tokens, rationale=rationale)  # type: ignore[arg-type]

    def _judge(self, action: str, frame: Any, rationale: str = "off", fixed: bool = False) -> Any:
        engine = self.backend.engine
        req = self._request(action, frame, rationale)
        if hasattr(self.backend, "fit"):  # the onnx backend's fixed image size
            req = self.backend._fitted(req)
        return engine.judge(req, self.tokens, min_new_tokens=self.tokens if fixed else 0)

    def prompt_tokens(self) -> int:
        """Length of one scenario prompt in tokens (image included)."""
        req = self._request(ACTIONS[0], self.frames.next(), "off")
        if hasattr(self.backend, "fit"):
            req = self.backend._fitted(req)
        return len(self.backend.engine.prepare(req.prompt).ids)

    def measures(self) -> dict[str, Callable[[], None]]:
        out: dict[str, Callable[[], None]] = {
            "verdict": self.verdict,
            "verdict_nocache": self.verdict_nocache,
            "full": self.full,
            "four_seq": self.four_seq,
            "four_batch": self.four_batch,
        }
        if self.bare:
            out.update(bare_full=self.bare_full, bare_first=self.bare_first,
                       pixels=self.pixels)
        return out

    def pixels(self) -> None:
        """The image processor alone on a new frame: the fast path, then the stock one."""
        inputs = self.backend.inputs
        for measure, fast in (("pixels_fast", True), ("pixels_stock", False)):
            frame = self.frames.next()
            saved, inputs.fast_pixels = inputs.fast_pixels, fast
            try:
                t = time.perf_counter()
                inputs.encode_images([frame])
                self.m.add(measure, (time.perf_counter() - t) * 1000)
            finally:
                inputs.fast_pixels = saved

    def verdict(self) -> None:
        frame = self.frames.next()
        t = time.perf_counter()
        o = self._judge(ACTIONS[0], frame)
        self.m.add("verdict", (time.perf_counter() - t) * 1000, _parts(o))
        # Another proposal on the same frame right after: the frame cache's case.
        t = time.perf_counter()
        o = self._judge(ACTIONS[1], frame)
        self.m.add("verdict_warm", (time.perf_counter() - t) * 1000, _parts(o))

    def verdict_nocache(self) -> None:
        engine = self.backend.engine
        saved = engine.prefix_cache, engine.frame_cache
        engine.prefix_cache, engine.frame_cache = False, 0
        try:
            frame = self.frames.next()
            t = time.perf_counter()
            o = self._judge(ACTIONS[0], frame)
            self.m.add("verdict_nocache", (time.perf_counter() - t) * 1000, _parts(o))
        finally:
            engine.prefix_cache, engine.frame_cache = saved

    def full(self) -> None:
        frame = self.frames.next()
        t = time.perf_counter()
        o = self._judge(ACTIONS[0], frame, rationale="sync", fixed=True)
        wall = (time.perf_counter() - t) * 1000
        parts = _parts(o)
        if o.timings_ms.get("decode") and o.n_tokens > 1:
            parts["decode_tok_s"] = (o.n_tokens - 1) / o.timings_ms["decode"] * 1000
        self.m.add("full", wall, parts)

    def four_seq(self) -> None:
        frame = self.frames.next()
        t = time.perf_counter()
        for a in ACTIONS:
            self._judge(a, frame)
        self.m.add("four_seq", (time.perf_counter() - t) * 1000)

    def four_batch(self) -> None:
        frame = self.frames.next()
        reqs = [self._request(a, frame, "off") for a in ACTIONS]
        if hasattr(self.backend, "fit"):
            reqs = [self.backend._fitted(r) for r in reqs]
        t = time.perf_counter()
        self.backend.engine.judge_batch(reqs, self.tokens)
        self.m.add("four_batch", (time.perf_counter() - t) * 1000)

    def _bare(self, n: int) -> float:
        import torch

        b = self.backend
        cfg = b._generation_config_for(n)
        cfg.min_new_tokens = n
        frame = self.frames.next()
        prompt = self.template.render(ACTIONS[0], (frame,))
        t = time.perf_counter()
        with torch.inference_mode():
            inputs = b._to_device(b.inputs(prompt))
            b.model.generate(**inputs, generation_config=cfg)
        return (time.perf_counter() - t) * 1000

    def bare_full(self) -> None:
        self.m.add("bare_full", self._bare(self.tokens))

    def bare_first(self) -> None:
        self.m.add("bare_first", self._bare(1))


def _parts(out: Any) -> dict[str, float]:
    keys = ("preprocess", "vision", "prefill", "verdict", "decode")
    return {k: float(out.timings_ms[k]) for k in keys if k in out.timings_ms}


def _peak_reset() -> None:
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def make_backend(name: str, model: str, scenario: Scenario, work: Path, tokens: int,
                 threads: int, device: str) -> Any:
    """A backend by benchmark name: transformers[-8bit|-4bit] or onnx."""
    if name.startswith("transformers"):
        from guard.backends.transformers_backend import TransformersBackend

        quant = name.split("-", 1)[1] if "-" in name else "none"
        return TransformersBackend(model, quantization=quant, device=device,
                                   max_new_tokens=tokens, min_pixels=3136, max_pixels=401_408)
    if name == "onnx":
        from guard.backends.onnx_backend import OnnxBackend
        from guard.backends.onnx_export import export_onnx

        w, h = scenario.image_size
        out = work / f"onnx-{w}x{h}"
        if not (out / "guard_onnx.json").is_file():
            export_onnx(model, out, (w, h))
        return OnnxBackend(str(out), device=device, max_new_tokens=tokens, threads=threads)
    raise SystemExit(f"unknown backend {name!r}: transformers, transformers-8bit, "
                     "transformers-4bit, onnx")


def _weights_mb(backend: Any) -> float:
    model = getattr(backend, "model", None)
    if model is not None:
        return float(model.get_memory_footprint()) / 2**20
    folder = Path(backend.model_id)
    return sum(f.stat().st_size for f in folder.glob("*.onnx")) / 2**20 + sum(
        f.stat().st_size for f in folder.glob("*.npy")) / 2**20


def run_scenario(model: str, scenario: Scenario, backends: Sequence[str], reps: int,
                 tokens: int, threads: int, device: str, work: Path,
                 warmup: int = 2) -> dict[str, Any]:
    """Measure every backend on one scenario; interleaved, rotating order."""
    import torch

    from guard.prompting import load_template

    template = load_template(scenario.template)
    frames = Frames(scenario.image_size)
    benches = []
    for name in backends:
        backend = make_backend(name, model, scenario, work, tokens, threads, device)
        benches.append(BackendBench(name, backend, template, frames, tokens,
                                    bare=name.startswith("transformers")))
    jobs = [(b, k, fn) for b in benches for k, fn in b.measures().items()]
    for i in range(warmup + reps):
        if i == warmup:
            for b in benches:
                b.m = Measured()
        shift = i % len(jobs)
        for _, _, fn in jobs[shift:] + jobs[:shift]:
            fn()
    out: dict[str, Any] = {"scenario": scenario.name, "image_size": list(scenario.image_size),
                           "template": scenario.template, "backends": {}}
    for b in benches:
        # Peak memory in a pass of its own (a full answer and a batch of four).
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        _peak_reset()
        b.full()
        b.four_batch()
        peak = (torch.cuda.max_memory_allocated() / 2**20) if cuda else _peak_rss_mb()
        stats = b.backend.engine.stats
        out["backends"][b.name] = {
            "wall_ms": {k: summary(v) for k, v in b.m.wall.items()},
            "parts_ms": {m: {k: summary(v) for k, v in parts.items()}
                         for m, parts in b.m.parts.items()},
            "weights_mb": _weights_mb(b.backend),
            "peak_mb": peak,
            "peak_kind": "cuda_max_allocated" if cuda else "process_peak_rss",
            "off_format": stats["off_format"],
            "prompt_tokens": b.prompt_tokens(),
        }
        b.backend.close()
    out["targets"] = check_targets(out["backends"])
    return out


def _p50(res: dict[str, Any], backend: str, measure: str, part: str | None = None) -> float:
    b = res[backend]
    if part is None:
        return float(b["wall_ms"][measure]["p50"])
    return float(b["parts_ms"][measure][part]["p50"])


def check_targets(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, as ratios of medians within this run."""
    out: dict[str, Any] = {}
    base = next((b for b in res if b.startswith("transformers")), None)
    if base is not None:
        v, f = _p50(res, base, "verdict"), _p50(res, base, "full")
        out["verdict_vs_full"] = {
            "ratio": v / f, "target": f"<= {TARGETS['verdict_vs_full']}",
            "met": v / f <= TARGETS["verdict_vs_full"],
            "warm_frame_ratio": _p50(res, base, "verdict_warm") / f,
            "vs_bare_generate_full": v / _p50(res, base, "bare_full"),
        }
        speedup = _p50(res, base, "verdict_nocache", "prefill") / _p50(res, base, "verdict",
                                                                        "prefill")
        out["prefix_prefill_speedup"] = {
            "ratio": speedup, "target": f">= {TARGETS['prefix_prefill_speedup']}",
            "met": speedup >= TARGETS["prefix_prefill_speedup"],
            "time_to_verdict_speedup": _p50(res, base, "verdict_nocache") / v,
        }
        four = _p50(res, base, "four_seq") / v
        out["four_vs_one"] = {
            "ratio": four, "target": f"<= {TARGETS['four_vs_one']}",
            "met": four <= TARGETS["four_vs_one"],
            "batched_ratio": _p50(res, base, "four_batch") / v,
        }
        if "onnx" in res:
            r = _p50(res, "onnx", "verdict") / v
            out["onnx_vs_transformers_verdict"] = {"ratio": r, "target": "<= 1.0",
                                                   "met": r <= 1.0}
    return out


def format_table(result: dict[str, Any]) -> str:
    """Markdown tables of one scenario's medians (p95 in parentheses), in ms."""
    rows = []
    cols = ["verdict", "verdict_warm", "verdict_nocache", "full", "four_seq", "four_batch",
            "bare_first", "bare_full"]
    head = "| backend | " + " | ".join(cols) + " | vision | prefill | prefill no cache | " \
        "decode tok/s | weights MB | peak MB |"
    rows.append(head)
    rows.append("|" + "---|" * (len(cols) + 7))
    for name, b in result["backends"].items():
        w = b["wall_ms"]
        cells = [f"{w[c]['p50']:.1f} ({w[c]['p95']:.1f})" if c in w else "" for c in cols]
        p = b["parts_ms"]
        vision = p.get("verdict", {}).get("vision", {}).get("p50")
        prefill = p.get("verdict", {}).get("prefill", {}).get("p50")
        nocache = p.get("verdict_nocache", {}).get("prefill", {}).get("p50")
        tok_s = p.get("full", {}).get("decode_tok_s", {}).get("p50")
        extra = [f"{x:.1f}" if x is not None else "" for x in (vision, prefill, nocache, tok_s)]
        peak = f"{b['peak_mb']:.0f}" if b["peak_mb"] is not None else ""
        rows.append(f"| {name} | " + " | ".join(cells + extra) +
                    f" | {b['weights_mb']:.1f} | {peak} |")
    lines = ["\n".join(rows), ""]
    for name, b in result["backends"].items():
        w = b["wall_ms"]
        if "pixels_fast" in w and "pixels_stock" in w:
            fast, stock = w["pixels_fast"]["p50"], w["pixels_stock"]["p50"]
            lines.append(f"- image processor ({name}): stock {stock:.2f} ms, fast path "
                         f"{fast:.2f} ms ({stock / fast:.1f}x)")
    for key, t in result["targets"].items():
        notes = ", ".join(f"{k} {v:.3f}" for k, v in t.items()
                          if k not in ("ratio", "target", "met") and isinstance(v, float))
        lines.append(f"- {key}: {t['ratio']:.3f} (target {t['target']}): "
                     f"{'met' if t['met'] else 'MISSED'}" + (f"; {notes}" if notes else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guard.bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: build --preset)")
    p.add_argument("--preset", default="small", choices=[*PRESETS, *FULL_SIZE],
                   help="random model to build when --model is not given (default small)")
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"],
                   help="architecture of a --preset model (full-size presets fix their own)")
    p.add_argument("--backends", default="transformers,onnx",
                   help="comma list of transformers, transformers-8bit, transformers-4bit, onnx")
    p.add_argument("--scenarios", default="world,world_v1,camera",
                   help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rationale-tokens", type=int, default=64,
                   help="rationale length after the verdict token in 'full' (default 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and ONNX Runtime threads (default 1: steady on a shared CPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--dtype", default="float32",
                   help="weights of a full-size --preset when built (bfloat16 on a GPU)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="guard-latency-"))
    model = args.model
    if model is None:
        device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
        model = str(build_model(args.preset, args.arch, work / "model", device=device,
                                dtype=args.dtype))
    tokens = 1 + args.rationale_tokens
    results: dict[str, Any] = {
        "model": args.model or f"random {args.preset} {args.arch} (rigged verdict-first)",
        "backends": args.backends.split(","),
        "reps": args.reps,
        "rationale_tokens": args.rationale_tokens,
        "threads": args.threads,
        "device": args.device,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "scenarios": {},
    }
    for name in args.scenarios.split(","):
        res = run_scenario(model, SCENARIOS[name], results["backends"], args.reps, tokens,
                           args.threads, args.device, work)
        results["scenarios"][name] = res
        w, h = res["image_size"]
        print(f"\n## {name}: {w}x{h}, prompt {res['template']}, {args.reps} reps, "
              f"{args.threads} thread(s); ms, median (p95)\n")
        print(format_table(res))
        sys.stdout.flush()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
