"""CASPO: GRPO plus token rewards from the model itself prompted with a safety constitution.

    python -m training.caspo --config configs/train/tiny/caspo.yaml --out runs/caspo
    accelerate launch --config_file configs/train/accelerate/zero2_8gpu.yaml \\
        -m training.caspo --config configs/train/qwen2_5_vl_7b/caspo_lora.yaml --out runs/caspo-7b

Options: `--set KEY=VALUE` overrides a config field (repeatable), `--resume` continues from the
last checkpoint, `--save-merged` also writes a LoRA run's merged weights. See training/run.py.
"""

from training.run import main

if __name__ == "__main__":
    raise SystemExit(main("caspo"))
