"""GRPO with the outcome reward (verdict, hazard category, well-formed): the RL baseline.

    python -m training.grpo --config configs/train/tiny/grpo.yaml --out runs/grpo
    accelerate launch --config_file configs/train/accelerate/zero2_8gpu.yaml \\
        -m training.grpo --config configs/train/qwen2_5_vl_7b/grpo_lora.yaml --out runs/grpo-7b

Options: `--set KEY=VALUE` overrides a config field (repeatable), `--resume` continues from the
last checkpoint, `--save-merged` also writes a LoRA run's merged weights. See training/run.py.
"""

from training.run import main

if __name__ == "__main__":
    raise SystemExit(main("grpo"))
