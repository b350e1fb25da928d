"""DPO on fixed pairs (reference answer vs a wrong-verdict answer): static preference alignment.

    python -m training.dpo --config configs/train/tiny/dpo.yaml --out runs/dpo
    accelerate launch --config_file configs/train/accelerate/zero2_8gpu.yaml \\
        -m training.dpo --config configs/train/qwen2_5_vl_7b/dpo_lora.yaml --out runs/dpo-7b

Options: `--set KEY=VALUE` overrides a config field (repeatable), `--resume` continues from the
last checkpoint, `--save-merged` also writes a LoRA run's merged weights. See training/run.py.
"""

from training.run import main

if __name__ == "__main__":
    raise SystemExit(main("dpo"))
