"""A look-alike curriculum for the knife-near-child rule: first scenes where the child is the
only extra figure, then the world's own scenes with look-alikes. One SFT run per stage through
`training.run.train`; each stage ends with a verdict-only check on validation knife scenes.

    python -m training.probes.knife_child_curriculum --model COPY_OF/hazardworld-small \
        --out OUT --stages easy:150 default:300 [--lr 5e-4]
    python -m training.probes.knife_child_curriculum --model COPY_OF/hazardworld-small \
        --out OUT --stages default:200:verdict:1e-3 all:100:full:3e-4

A stage is ``WORLD:STEPS[:LOSS[:LR]]``. WORLD: ``easy`` is knife scenes with no look-alike
(``presence_decoy_rate`` and ``extra_hazard_rate`` 0: a safe scene holds the asking adult only,
an unsafe one the adult and the child); ``default`` is knife scenes of the default world (an
adult or a cat where the child would be in 80% of safe scenes, a cat in either label in 30%);
``all`` is every default rule (knife scenes a quarter). LOSS: ``focused`` (the default: the
earlier probes' ``max_length`` = the longest knife prompt + 3, so the loss averages the verdict
with the answer tokens that fit), ``verdict`` (``data.answer_label_tokens: 1``, the loss on the
verdict token alone) or ``full`` (the whole answer). LR defaults to ``--lr``.
Each stage continues the previous one's weights with a fresh optimizer (constant lr after 10
warmup steps for ``verdict``, else cosine), batch 64. Items: train split, world seed 0,
disjoint ranges from 200000 on (the embedded model saw 0..~70000). After each stage, a check
on 256 knife items of `train` at world seed 77 (validation, never a test seed); the full
per-rule report is `python -m training.evaluate --model OUT/K_WORLD/run/model --split
test_iid --seed 2000 --n 512 --verdict-only`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

WORLDS: dict[str, dict[str, Any]] = {
    "easy": {"rules": ["knife_child"], "presence_decoy_rate": 0.0, "extra_hazard_rate": 0.0},
    "default": {"rules": ["knife_child"]},
    "all": {},
}
MAX_LENGTH = 85  # the longest knife prompt at 112 px (82 tokens) + 3: the verdict is in


def _check(model_dir: Path) -> dict[str, float]:
    from guard.world import WorldConfig
    from training.data import world_items
    from training.evaluate import evaluate, load_for_eval

    model, processor = load_for_eval(model_dir)
    out = {}
    for name in ("default",):
        world = WORLDS[name]
        items = world_items("train", 256, seed=77, config=WorldConfig(**world))
        rep, _ = evaluate(model, processor, items, verdict_only=True, batch_size=64)
        out[name] = rep["accuracy"]
        out[f"{name}_false_veto"] = rep["false_veto_rate"]
    return out


def main(argv: list[str] | None = None) -> int:
    import yaml

    from training.config import load_run_config
    from training.run import train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="start weights (a copy, never the embedded)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stages", nargs="+", default=["easy:150", "default:300"])
    p.add_argument("--lr", type=float, default=5e-4)
    args = p.parse_args(argv)

    model, start, log = args.model, 200_000, []
    for k, stage in enumerate(args.stages):
        parts = stage.split(":")
        world_name, steps = parts[0], parts[1]
        loss = parts[2] if len(parts) > 2 else "focused"
        lr = parts[3] if len(parts) > 3 else ""
        world = dict(WORLDS[world_name])
        out = args.out / f"{k}_{world_name}"
        out.mkdir(parents=True, exist_ok=True)
        run = {"method": "sft", "seed": k, "num_threads": 2,
               "model": {"id": str(model), "dtype": "float32"},
               "data": {"train": {"source": "world", "split": "train", "n": 64 * int(steps),
                                  "seed": 0, "start": start, "overrides": world,
                                  "bare_phrase_rate": 0.15, "unnamed_tool_rate": 0.15},
                        "template": "consequence_compact", "action_format": "tool_call_v1",
                        **({"answer_label_tokens": 1} if loss == "verdict" else {})},
               "trainer": {"use_cpu": True, "bf16": False, "gradient_checkpointing": False,
                           "per_device_train_batch_size": 64,
                           "learning_rate": float(lr) if lr else args.lr,
                           "lr_scheduler_type": ("constant_with_warmup" if loss == "verdict"
                                                 else "cosine"), "warmup_steps": 10,
                           "max_steps": int(steps), "logging_steps": 10,
                           "save_strategy": "no",
                           "max_length": MAX_LENGTH if loss == "focused" else 1024,
                           "dataloader_num_workers": 0, "disable_tqdm": True}}
        start += 64 * int(steps)
        (out / "run.yaml").write_text(yaml.safe_dump(run))
        t0 = time.time()
        summary = train(load_run_config(out / "run.yaml", method="sft"), out / "run")
        model = out / "run" / "model"
        entry = {"stage": stage, "world": world, "loss": loss,
                 "train_s": round(time.time() - t0, 1),
                 "train_loss": summary.get("train_loss"), "check": _check(model)}
        log.append(entry)
        print("STAGE", json.dumps(entry), flush=True)
        (args.out / "curriculum.json").write_text(json.dumps(log, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
