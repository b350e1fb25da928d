"""Loading the model to train: dtype, bitsandbytes quantization, a starting adapter, LoRA.

The same `ModelSpec` loads a tiny random model on CPU and Qwen2.5-VL-7B / Qwen3-VL-4B on GPUs.
Loading is the guard's own (`guard.backends.hf_loading`: the model class, the dtype, the
quantization that leaves the vision tower and the LM head alone, the adapter), so a model
trains on what the judge runs; LoRA targets the language model's linear layers only.
"""

from __future__ import annotations

from typing import Any

from training.config import ModelSpec


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
        BackendError: The model or adapter does not load, or it is not a Qwen-VL model.
    """
    from guard.backends.hf_loading import load_adapter, resolve_dtype
    from guard.backends.hf_loading import load_model as load_qwen_vl

    model, _ = load_qwen_vl(
        spec.id, dtype=resolve_dtype(spec.dtype, training=True), quantization=spec.quantization,
        attn_implementation=spec.attn_implementation, what="training",
    )
    quantized = spec.quantization != "none"
    if quantized:
        from peft import prepare_model_for_kbit_training

        # before any adapter: it freezes every parameter and upcasts the unquantized ones
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = peft_config(spec)
    if spec.adapter:
        model = load_adapter(model, spec.adapter, merge=not quantized, trainable=quantized)
        if quantized:
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


__all__ = ["changed_parameters", "load_model", "peft_config", "trainable_parameters"]
