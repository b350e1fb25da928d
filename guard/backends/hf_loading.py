"""Loading a Qwen-VL model with transformers: the one path inference, training, ONNX export
and the benches use.

    from guard.backends.hf_loading import load_adapter, load_model, load_processor_parts
    model, config = load_model("Qwen/Qwen2.5-VL-7B-Instruct", dtype=resolve_dtype("auto", dev),
                               quantization="4bit")
    model = load_adapter(model, "runs/lora", merge=False)
    parts = load_processor_parts("Qwen/Qwen2.5-VL-7B-Instruct")

What is decided here, once:
- the model class from ``config.json``'s ``model_type`` (`MODEL_CLASSES`);
- the dtype "auto" means: bfloat16 on a CUDA device that supports it, else float16 for
  inference (float32 for training: float16 weights do not train stably under a plain
  optimizer), float32 on a CPU (half-precision matmuls are slow or missing there);
- bitsandbytes quantization: 8-bit, or NF4 4-bit with double quantization, never the vision
  tower or the LM head (`NOT_QUANTIZED`);
- a PEFT adapter: merged into unquantized weights (no extra matmuls), kept separate on
  quantized ones (merging would re-quantize);
- the processor: the stock ``AutoProcessor`` where torchvision really imports, else the
  tokenizer and the image processor on their own (PIL image backend), with the chat template
  from the tokenizer, else the folder's template file, else Qwen2.5-VL's
  (`load_processor_parts`); trl's trainers get the same parts as a processor
  (`image_only_processor_class`).

Heavy imports happen inside the functions: importing this module needs neither torch nor
transformers.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from guard._deps import require
from guard.errors import BackendError, ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

UseProcessor = Literal["auto", "always", "never"]

# model_type (config.json) -> model class in transformers. All three take the same inputs.
MODEL_CLASSES: dict[str, str] = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}

# model_type -> stock processor class name in transformers
PROCESSOR_CLASSES: dict[str, str] = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}

# Quantization covers the language model only. The vision tower (about 0.6 B of a 7 B model)
# loses disproportionate accuracy at 4 bits for little memory saved, and the LM head is kept
# in full precision as transformers does by default. Patterns match from the start of a module
# name ("model.visual" in transformers 5, "visual" in older layouts).
NOT_QUANTIZED = ["model.visual", "visual", "lm_head"]


def first_line(exc: BaseException) -> str:
    """An exception as one line (its first line, else its type)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def torchvision_works() -> bool:
    """True when torchvision actually imports (a present but broken one counts as missing).

    ``importlib.util.find_spec`` is not enough: a CUDA torchvision wheel beside a CPU torch is
    found but fails on import, and transformers would then pick backends that crash.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, OSError (missing CUDA libs), RuntimeError (op mismatch)
        return False
    return True


# -- device, dtype, quantization --------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """The torch device of a ``model.device`` value ("auto": cuda when available, else cpu).

    Raises:
        BackendError: Not a device, or a CUDA device without CUDA.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BackendError(f"model.device = {device!r}: {first_line(exc)}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"model.device = {device!r} but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_dtype(dtype: str, device: torch.device | str | None = None, *,
                  training: bool = False) -> torch.dtype:
    """The torch dtype of a ``model.dtype`` value on `device` (None: the default CUDA device
    when there is one, else the CPU); see the module docstring for what "auto" means."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)  # type: ignore[no-any-return]
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32 if training else torch.float16
    return torch.float32


class _QuietBitsandbytes(logging.Filter):
    """Drops bitsandbytes log lines that say nothing actionable.

    8-bit matmuls log a cast to float16 on every call (a flood at generation time), and the CPU
    backend reports at import that the optional hub `kernels` package is missing (it would
    fetch code from a hub; the built-in kernels work).
    """

    _PREFIXES = ("MatMul8bitLt: inputs will be cast", "Failed to load CPU gemm_4bit_forward")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self._PREFIXES)


def quiet_bitsandbytes() -> None:
    """Install the `_QuietBitsandbytes` filter (once) on bitsandbytes' noisy loggers."""
    flt = _QuietBitsandbytes()
    for name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietBitsandbytes) for f in logger.filters):
            logger.addFilter(flt)


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    """A ``BitsAndBytesConfig`` for "8bit" or "4bit" (`compute_dtype` for 4-bit matmuls);
    None for "none".

    Raises:
        ConfigError: Another value.
        MissingExtraError: bitsandbytes is not installed.
    """
    if quantization == "none":
        return None
    if quantization not in ("8bit", "4bit"):
        raise ConfigError(f"model.quantization = {quantization!r}: expected none, 8bit or 4bit")
    quiet_bitsandbytes()  # before the import: the CPU backend logs at import time
    require("bitsandbytes", f"model.quantization = {quantization!r}")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTIZED)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=NOT_QUANTIZED,
    )


# -- model and adapter ------------------------------------------------------------------------


def _looks_like_path(model_id: str) -> bool:
    """A local folder rather than a hub id ("name" or "org/name")."""
    return (
        model_id.startswith(("/", ".", "~"))
        or model_id.count("/") > 1
        or "\\" in model_id
        or (len(model_id) > 1 and model_id[1] == ":")  # a Windows drive
    )


def resolve_local(model_id: str, what: str) -> str:
    """`model_id` itself if it names a hub id; its expanded path if it is a local folder.

    Raises:
        BackendError: It is a file, or it looks like a path and does not exist.
    """
    path = Path(model_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BackendError(f"{what} is not a folder: {model_id}")
        return str(path)
    if _looks_like_path(model_id):
        raise BackendError(f"{what} folder not found: {model_id}")
    return model_id


def model_config(model_id: str, *, what: str = "guard", **hub_kwargs: Any) -> Any:
    """The model's ``AutoConfig``, checked to be a Qwen-VL one.

    Raises:
        BackendError: It does not load, or it is another kind of model (`what` runs only
            `MODEL_CLASSES`).
    """
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model_id, **hub_kwargs)
    except Exception as exc:
        raise BackendError(f"cannot load model {model_id!r}: {first_line(exc)}") from exc
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_CLASSES:
        raise BackendError(
            f"model {model_id!r} is a {model_type!r} model; {what} runs "
            f"{', '.join(MODEL_CLASSES)}"
        )
    return config


def load_model(
    model_id: str,
    *,
    dtype: torch.dtype | str,
    quantization: str = "none",
    attn_implementation: str | None = None,
    device_map: Any = None,
    what: str = "guard",
    **hub_kwargs: Any,
) -> tuple[Any, Any]:
    """A Qwen-VL ``...ForConditionalGeneration`` and its config.

    Args:
        model_id: Hub id or local folder.
        dtype: Weight dtype (a torch dtype, or a `resolve_dtype` name).
        quantization: "none", "8bit" or "4bit" (compute dtype: `dtype`).
        attn_implementation: Passed to ``from_pretrained``; None lets transformers choose.
        device_map: Passed to ``from_pretrained`` when given.
        what: Who loads it, for error messages ("the transformers backend", "training").
        **hub_kwargs: Passed to ``from_pretrained`` (e.g. ``revision``).

    Raises:
        BackendError: The model does not load or is not a Qwen-VL model.
        ConfigError: A bad quantization value.
        MissingExtraError: bitsandbytes is needed and missing.
    """
    import transformers

    torch_dtype = resolve_dtype(dtype) if isinstance(dtype, str) else dtype
    config = model_config(model_id, what=what, **hub_kwargs)
    cls = getattr(transformers, MODEL_CLASSES[config.model_type])
    kwargs: dict[str, Any] = {"dtype": torch_dtype, **hub_kwargs}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    quant = quantization_config(quantization, torch_dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    try:
        model = cls.from_pretrained(model_id, **kwargs)
    except Exception as exc:
        raise BackendError(f"cannot load model {model_id!r}: {first_line(exc)}") from exc
    return model, config


def load_adapter(model: Any, path: str, *, merge: bool, trainable: bool = False) -> Any:
    """`model` with the PEFT adapter at `path`: merged into the weights (`merge`, for
    unquantized weights) or kept as a ``PeftModel`` (`trainable` to train it further).

    Raises:
        BackendError: The adapter does not load.
        MissingExtraError: peft is not installed.
    """
    peft = require("peft", "model.adapter (LoRA)")
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls an alias that transformers 5 deprecates; nothing to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = peft.PeftModel.from_pretrained(model, path, is_trainable=trainable)
    except Exception as exc:
        raise BackendError(f"cannot load adapter {path!r}: {first_line(exc)}") from exc
    return model.merge_and_unload() if merge else model


# -- processor ----------------------------------------------------------------------------------


@dataclass
class ProcessorParts:
    """What a Qwen-VL prompt is built with."""

    tokenizer: Any
    image_processor: Any
    processor: Any | None
    """The stock ``AutoProcessor``, or None where it could not be used."""
    chat_template: str | None
    """The template to render with when the tokenizer has none (None: the tokenizer's or
    the stock processor's own)."""


def load_processor_parts(model_id: str, use_processor: UseProcessor = "auto",
                         **hub_kwargs: Any) -> ProcessorParts:
    """The tokenizer, image processor and (where allowed) the stock processor of a model.

    Args:
        model_id: Hub id or local folder of the model.
        use_processor: "auto" uses ``AutoProcessor`` where torchvision imports and falls back
            to the tokenizer and image processor if it fails to load; "always" requires it;
            "never" always takes the fallback.
        **hub_kwargs: Passed to every ``from_pretrained`` (e.g. ``revision``).

    Raises:
        BackendError: Something could not be loaded.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if use_processor != "never" and torchvision_works():
        try:
            processor = AutoProcessor.from_pretrained(model_id, **hub_kwargs)
            if not hasattr(processor, "image_processor"):
                raise TypeError(f"{type(processor).__name__} has no image processor")
            return ProcessorParts(processor.tokenizer, processor.image_processor, processor,
                                  None)
        except Exception as exc:
            if use_processor == "always":
                raise BackendError(
                    f"{model_id}: cannot load the stock processor: {first_line(exc)}"
                ) from exc
            log.info("%s: stock processor unavailable (%s); building inputs manually",
                     model_id, first_line(exc))
    elif use_processor == "always":
        raise BackendError(
            "model.use_processor = 'always' needs torchvision (the stock Qwen-VL processor "
            "cannot be built without it); install a torchvision matching torch or set "
            "use_processor to 'auto'"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, **hub_kwargs)
        # PIL unless torchvision really imports: transformers only checks that it is
        # installed, and a broken one would crash at the first image.
        backend = None if torchvision_works() else "pil"
        image_processor = AutoImageProcessor.from_pretrained(model_id, backend=backend,
                                                             **hub_kwargs)
    except Exception as exc:
        raise BackendError(
            f"{model_id}: cannot load the tokenizer or image processor: {first_line(exc)}"
        ) from exc
    chat_template = None
    if getattr(tokenizer, "chat_template", None) is None:
        chat_template = _load_chat_template(model_id, **hub_kwargs)
        if chat_template is None:
            from guard.backends.qwen_inputs import QWEN2_5_VL_CHAT_TEMPLATE

            log.warning("%s: no chat template found; using the Qwen2.5-VL one", model_id)
            chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return ProcessorParts(tokenizer, image_processor, None, chat_template)


def _load_chat_template(model_id: str, **hub_kwargs: Any) -> str | None:
    """The processor's chat template file, for checkpoints whose tokenizer lacks one."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(
                model_id,
                name,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **hub_kwargs,
            )
        except OSError:
            path = None
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return json.loads(text)["chat_template"] if name.endswith(".json") else text  # type: ignore[no-any-return]
    return None


@functools.cache
def image_only_processor_class(model_type: str) -> type:
    """A subclass of the model's stock processor without a video processor.

    The stock Qwen-VL processors cannot be built where torchvision does not import: their
    ``__init__`` insists on a video processor. ``ProcessorMixin`` derives its sub-processors
    from the ``__init__`` signature, so leaving ``video_processor`` out of it is enough;
    ``__call__`` skips videos when none are given. ``save_pretrained`` writes the tokenizer
    and image processor separately (what the guard's loaders read), not a processor config
    naming this class.

    Raises:
        ValueError: `model_type` is not a Qwen-VL one.
    """
    import transformers

    if model_type not in PROCESSOR_CLASSES:
        raise ValueError(
            f"model type {model_type!r} has no Qwen-VL processor; expected one of "
            f"{', '.join(PROCESSOR_CLASSES)}"
        )
    base = getattr(transformers, PROCESSOR_CLASSES[model_type])

    def __init__(
        self: Any, image_processor: Any = None, tokenizer: Any = None,
        chat_template: str | None = None, **kwargs: Any,
    ) -> None:
        base.__init__(self, image_processor=image_processor, tokenizer=tokenizer,
                      video_processor=None, chat_template=chat_template, **kwargs)

    def save_pretrained(self: Any, save_directory: str | Path, **kwargs: Any) -> list[str]:
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(save_directory))
        files += list(self.image_processor.save_pretrained(save_directory))
        return [str(f) for f in files]

    return type(f"ImageOnly{base.__name__}", (base,), {
        "__init__": __init__,
        "save_pretrained": save_pretrained,
        "__module__": __name__,
        "__doc__": f"{base.__name__} without a video processor (no torchvision needed).",
    })


def load_processor(model_id: str | Path, *, use_processor: UseProcessor = "auto",
                   **hub_kwargs: Any) -> Any:
    """The model's processor as trl's trainers want it (a ``ProcessorMixin``): the stock one
    where it loads, else the same parts as `load_processor_parts` in an image-only subclass.

    Raises:
        BackendError: Something could not be loaded.
    """
    model_id = str(model_id)
    parts = load_processor_parts(model_id, use_processor, **hub_kwargs)
    processor = parts.processor
    if processor is None:
        config = model_config(model_id, what="a Qwen-VL processor", **hub_kwargs)
        cls = image_only_processor_class(config.model_type)
        processor = cls(image_processor=parts.image_processor, tokenizer=parts.tokenizer,
                        chat_template=parts.chat_template or parts.tokenizer.chat_template)
    return processor
