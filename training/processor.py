"""The processor trl's trainers need, with or without torchvision.

trl's GRPO/DPO/SFT trainers recognise a vision-language model by a ``ProcessorMixin``
processing class. The guard's loader (`guard.backends.hf_loading.load_processor`) gives one
with the same fallbacks as at inference: the stock processor where torchvision works, else an
image-only subclass of the same class over the tokenizer and image processor the judge would
use. Its prompts tokenize to exactly the ids the guard uses at inference
(``guard.backends.qwen_inputs.build_inputs``; checked in ``tests/training/test_data.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guard.backends.hf_loading import PROCESSOR_CLASSES as PROCESSOR_CLASSES
from guard.backends.hf_loading import UseProcessor
from guard.backends.hf_loading import image_only_processor_class as image_only_processor_class
from guard.backends.qwen_inputs import QwenInputBuilder


def load_processor(model_id: str | Path, *, use_processor: UseProcessor = "auto",
                   **hub_kwargs: Any) -> Any:
    """The model's processor (`guard.backends.hf_loading.load_processor`), its tokenizer
    padding on the left as trl's generation wants.

    Args:
        model_id: Hub id or local folder of a Qwen-VL model.
        use_processor: "auto" (stock if it loads, else image-only), "always" (stock or an
            error), "never" (always image-only).
        **hub_kwargs: Passed to every ``from_pretrained`` (e.g. ``revision``).

    Raises:
        BackendError: Something could not be loaded.
    """
    from guard.backends import hf_loading

    processor = hf_loading.load_processor(model_id, use_processor=use_processor, **hub_kwargs)
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
