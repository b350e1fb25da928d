"""Supervised fine-tuning on reference answers: the warm start that teaches the answer format.

    python -m training.sft --config configs/train/tiny/sft.yaml --out runs/sft
    accelerate launch --config_file configs/train/accelerate/zero2_8gpu.yaml \\
        -m training.sft --config configs/train/qwen2_5_vl_7b/sft_lora.yaml --out runs/sft-7b

Options: `--set KEY=VALUE` overrides a config field (repeatable), `--resume` continues from the
last checkpoint, `--save-merged` also writes a LoRA run's merged weights. See training/run.py.
"""

from training.run import main

if __name__ == "__main__":
    raise SystemExit(main("sft"))
