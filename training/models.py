"""Loading the model to train: dtype, bitsandbytes quantization, a starting adapter, LoRA.

The same `ModelSpec` loads a tiny random model on CPU and Qwen2.5-VL-7B / Qwen3-VL-4B on GPUs.
The vision tower and the LM head are never quantized (as in the guard's transformers backend),
and LoRA targets the language model's linear layers only.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from guard.backends.transformers_backend import MODEL_CLASSES
from guard.errors import ConfigError
from training.config import ModelSpec

log = logging.getLogger(__name__)

_NOT_QUANTIZED = ["model.visual", "visual", "lm_head"]


def torch_dtype(name: str) -> Any:
    """The torch dtype of a `ModelSpec.dtype` ("auto": bfloat16 on CUDA, else float32)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def quantization_config(spec: ModelSpec) -> Any:
    """A ``BitsAndBytesConfig`` for `spec.quantization`, or None."""
    if spec.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_NOT_QUANTIZED)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(spec.dtype),
        llm_int8_skip_modules=_NOT_QUANTIZED,
    )


def peft_config(spec: ModelSpec) -> Any:
    """A ``LoraConfig`` for `spec.lora`, or None for full fine-tuning."""
    if spec.lora is None:
        return None
    from peft import LoraConfig

    lo = spec.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=lo.target_modules,
        modules_to_save=lo.modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_model(spec: ModelSpec) -> tuple[Any, Any]:
    """The model to hand to a trl trainer, and the LoRA config to give it (or None).

    With ``spec.adapter`` on an unquantized model the adapter is merged into the weights
    first and a fresh LoRA (if any) goes on top; on a quantized model the adapter itself is
    loaded trainable and no new config is returned (trl refuses a PeftModel plus a config).

    Raises:
        ConfigError: Not a Qwen-VL model, or an adapter on a quantized model without LoRA.
    """
    import transformers

    config = transformers.AutoConfig.from_pretrained(spec.id)
    if config.model_type not in MODEL_CLASSES:
        raise ConfigError(
            f"model.id = {spec.id!r} is a {config.model_type!r} model; training supports "
            f"{', '.join(MODEL_CLASSES)}"
        )
    cls = getattr(transformers, MODEL_CLASSES[config.model_type])
    kwargs: dict[str, Any] = {"dtype": torch_dtype(spec.dtype)}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
    model = cls.from_pretrained(spec.id, **kwargs)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        # before any adapter: it freezes every parameter and upcasts the unquantized ones
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = peft_config(spec)
    if spec.adapter:
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            if quant is None:
                model = PeftModel.from_pretrained(model, spec.adapter).merge_and_unload()
            else:
                model = PeftModel.from_pretrained(model, spec.adapter, is_trainable=True)
                lora = None
    return model, lora


def trainable_parameters(model: Any, max_numel: int = 20_000_000) -> dict[str, Any]:
    """CPU copies of trainable parameters, by name, to check afterwards that training moved
    them.

    At most about `max_numel` values are copied (a 7B full fine-tune would otherwise double
    its memory): beyond that, an evenly spread subset of the tensors. Tensors that are empty
    here (sharded away by DeepSpeed ZeRO-3 / FSDP) are skipped.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.numel()]
    total = sum(p.numel() for _, p in params)
    stride = max(1, -(-total // max_numel)) if total else 1
    return {n: p.detach().float().cpu().clone() for n, p in params[::stride]}


def changed_parameters(model: Any, before: dict[str, Any], atol: float = 0.0) -> list[str]:
    """Names of the parameters in `before` whose values differ now by more than `atol`."""
    now = dict(model.named_parameters())
    moved = []
    for name, old in before.items():
        p = now.get(name)
        if p is None or p.shape != old.shape:
            continue
        if not bool((p.detach().float().cpu() - old).abs().max() <= atol):
            moved.append(name)
    return moved


__all__ = [
    "changed_parameters",
    "load_model",
    "peft_config",
    "quantization_config",
    "torch_dtype",
    "trainable_parameters",
]
