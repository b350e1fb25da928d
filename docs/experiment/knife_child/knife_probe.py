"""A probe (kept as it was run, not library code): which fix makes the knife-near-child rule learnable?

    python docs/experiment/knife_child/knife_probe.py VARIANT OUT STEPS
VARIANT: base | child (distinct rendering: a large magenta figure) | wide (vision tower 128
wide instead of 64) | tokens (224 px: 64 image tokens instead of 16).
From random weights (guard.tiny, the experiment's 0.8 M sizes), knife_child only, verdict-
focused (max_length = longest prompt + 3), batch 64, lr 1e-3 cosine, seed 0; validation:
512 items of `train` at world seed 77 (never test_*), verdict-only.
"""
import json
import sys
import time
from pathlib import Path

import yaml

variant, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
if variant == "child":
    from guard.world import drawing
    drawing.DRAW["child"] = (drawing._person((230, 0, 200), (110, 70, 30)), 0.8)
from guard.tiny import build_tiny_model
from guard.world import WorldConfig
from training.config import load_run_config
from training.data import world_items
from training.evaluate import evaluate, load_for_eval
from training.run import train

sizes = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
             vision_hidden_size=64, vision_depth=2, vision_heads=4)
image, max_length = 112, 85
if variant == "wide":
    sizes["vision_hidden_size"] = 128
if variant == "tokens":
    image, max_length = 224, 133
world = {"rules": ["knife_child"], "image_size": image}
base = build_tiny_model("qwen2_5_vl", out / "base", seed=0, **sizes)
run = {"method": "sft", "seed": 0, "num_threads": 2,
       "model": {"id": str(base), "dtype": "float32"},
       "data": {"train": {"source": "world", "split": "train", "n": 8192, "seed": 0,
                          "overrides": world, "bare_phrase_rate": 0.15,
                          "unnamed_tool_rate": 0.15},
                "template": "consequence_compact", "action_format": "tool_call_v1"},
       "trainer": {"use_cpu": True, "bf16": False, "gradient_checkpointing": False,
                   "per_device_train_batch_size": 64, "learning_rate": 1e-3,
                   "lr_scheduler_type": "cosine", "warmup_steps": 20, "max_steps": steps,
                   "logging_steps": 20, "save_strategy": "no", "max_length": max_length,
                   "dataloader_num_workers": 0, "disable_tqdm": True}}
(out / "run.yaml").write_text(yaml.safe_dump(run))
t0 = time.time()
summary = train(load_run_config(out / "run.yaml", method="sft"), out / "run")
train_s = time.time() - t0
model, processor = load_for_eval(out / "run" / "model")
items = world_items("train", 512, seed=77, config=WorldConfig(**world))
rep, _ = evaluate(model, processor, items, verdict_only=True, batch_size=64)
res = {"variant": variant, "steps": steps, "train_s": round(train_s, 1),
       "accuracy": rep["accuracy"], "r0": rep["r0"], "false_veto_rate": rep["false_veto_rate"],
       "parse_fail_rate": rep["parse_fail_rate"]}
(out / "result.json").write_text(json.dumps(res, indent=2))
print("RESULT", json.dumps(res))
