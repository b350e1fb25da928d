"""Supervised fine-tuning on reference answers: the warm start that teaches the answer format.

    python -m training.sft --config configs/train/tiny/sft.yaml --out runs/sft
    accelerate launch --config_file configs/train/accelerate/zero2_8gpu.yaml \\
        -m training.sft --config configs/train/qwen2_5_vl_7b/sft_lora.yaml --out runs/sft-7b

Options: `--set KEY=VALUE` overrides a config field (repeatable), `--resume` continues from the
last checkpoint, `--save-merged` also writes a LoRA run's merged weights. See training/run.py.
"""

from __future__ import annotations

from typing import Any

from training.run import main


def verdict_weighted_trainer_class() -> Any:
    """trl's ``SFTTrainer`` with ``data.verdict_loss_weight``: its own loss, each answer
    token's log-probability scaled by `training.losses.token_weight_scale` of the batch's
    ``label_weights`` (`training.collators.GuardSFTCollator.verdict_weight`). Built on first
    use (trl is imported only once training starts)."""
    from trl import SFTTrainer

    from training.collators import LABEL_WEIGHTS
    from training.losses import token_weight_scale

    class _Reweighted:
        """The model, its fused per-token log-probabilities scaled (what trl's loss sums);
        entropy and token accuracy, trl's metrics, are left as they are."""

        def __init__(self, model: Any, scale: Any) -> None:
            self.model, self.scale = model, scale

        def __call__(self, **kwargs: Any) -> Any:
            out = self.model(**kwargs)
            if kwargs.get("fused_lm_head") and out.log_probs is not None:
                # log_probs[:, t] scores labels[:, t + 1] (trl shifts inside the fused head)
                out.log_probs = out.log_probs * self.scale[:, 1:].to(out.log_probs)
            return out

    class VerdictWeightedSFTTrainer(SFTTrainer):  # type: ignore[misc]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            weights = inputs.pop(LABEL_WEIGHTS, None)
            if weights is not None:
                model = _Reweighted(model, token_weight_scale(weights))
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return VerdictWeightedSFTTrainer


if __name__ == "__main__":
    raise SystemExit(main("sft"))
