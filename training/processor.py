"""The processor trl's trainers need, with or without torchvision.

trl's GRPO/DPO/SFT trainers recognise a vision-language model by a ``ProcessorMixin``
processing class. The stock ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` cannot be built
where torchvision does not import (a CPU-only torch): their ``__init__`` insists on a video
processor, which needs torchvision. Where torchvision works (GPU machines) the stock processor
is used; elsewhere `load_processor` builds an image-only subclass of the same class, which
drops the video processor and nothing else. Its prompts tokenize to exactly the ids the guard
uses at inference (``guard.backends.qwen_inputs.build_inputs``; checked in
``tests/training/test_data.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from guard.backends.qwen_inputs import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    QwenInputBuilder,
    torchvision_works,
)

# model_type -> stock processor class name in transformers
PROCESSOR_CLASSES: dict[str, str] = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}


@functools.cache
def image_only_processor_class(model_type: str) -> type:
    """A subclass of the model's stock processor without a video processor.

    ``ProcessorMixin`` derives its sub-processors from the ``__init__`` signature, so leaving
    ``video_processor`` out of it is enough; ``__call__`` skips videos when none are given.
    ``save_pretrained`` writes the tokenizer and image processor separately (what the guard's
    loaders read), not a processor config naming this class.
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


def load_processor(model_id: str | Path, *, use_processor: str = "auto",
                   **hub_kwargs: Any) -> Any:
    """The model's processor: stock where torchvision works, image-only elsewhere.

    Args:
        model_id: Hub id or local folder of a Qwen-VL model.
        use_processor: "auto" (stock if it loads, else image-only), "always" (stock or an
            error), "never" (always image-only).
        **hub_kwargs: Passed to every ``from_pretrained`` (e.g. ``revision``).

    Returns:
        A ``ProcessorMixin`` whose tokenizer pads on the left (trl's generation wants it).
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

    model_id = str(model_id)
    processor = None
    if use_processor != "never" and torchvision_works():
        try:
            processor = AutoProcessor.from_pretrained(model_id, **hub_kwargs)
        except Exception:
            if use_processor == "always":
                raise
    elif use_processor == "always":
        raise RuntimeError("use_processor='always' needs a torchvision that imports")
    if processor is None:
        config = AutoConfig.from_pretrained(model_id, **hub_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_id, **hub_kwargs)
        backend = None if torchvision_works() else "pil"
        image_processor = AutoImageProcessor.from_pretrained(model_id, backend=backend,
                                                             **hub_kwargs)
        chat_template = getattr(tokenizer, "chat_template", None) or QWEN2_5_VL_CHAT_TEMPLATE
        cls = image_only_processor_class(config.model_type)
        processor = cls(image_processor=image_processor, tokenizer=tokenizer,
                        chat_template=chat_template)
    processor.tokenizer.padding_side = "left"
    return processor


def input_builder(processor: Any, model_config: Any) -> QwenInputBuilder:
    """The guard's own input builder over a processor's tokenizer and image processor.

    Training collators use it so that prompts are tokenized exactly as the guard's judge
    tokenizes them at inference (the manual route; it gives the stock processor's ids).
    """
    return QwenInputBuilder(
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        image_token_id=model_config.image_token_id,
        video_token_id=getattr(model_config, "video_token_id", None),
        chat_template=getattr(processor, "chat_template", None),
    )


__all__ = ["PROCESSOR_CLASSES", "image_only_processor_class", "input_builder", "load_processor"]
