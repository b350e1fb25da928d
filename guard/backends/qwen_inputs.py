"""Model inputs for Qwen-VL judges (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) from a chat prompt.

Two routes give the same tensors:

- **manual** (always available): the tokenizer's chat template renders the conversation with
  one ``<|image_pad|>`` per image, the image processor (its PIL backend where torchvision is
  missing) turns each image into patches and a ``(t, h, w)`` grid, and each placeholder is
  expanded to ``t * h * w // merge_size**2`` copies, as the stock processor does.
- **stock processor** (``AutoProcessor``): needs torchvision, whose binary does not import
  beside a CPU-only torch; ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` cannot even be
  built without it (they require a video processor).

Which route a model gets, and every loading fallback, is decided in
`guard.backends.hf_loading` (shared with training).

Both always return ``mm_token_type_ids`` (1 on image tokens): without it Qwen2.5-VL silently
falls back to 1-D positions (wrong logits) and Qwen3-VL raises.

Training code reuses this module: pass ``completion`` (the assistant's answer) to get
``labels`` that are ``-100`` on the prompt and the completion's token ids after it. The prompt
part is tokenized exactly as at inference, so the model is trained on the ids it will see.
"""

from __future__ import annotations

import functools
import json
import logging
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guard.backends.hf_loading import UseProcessor, load_processor_parts
from guard.backends.hf_loading import torchvision_works as torchvision_works  # re-exported
from guard.errors import BackendError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from guard.backends.base import ChatPrompt
    from guard.imaging import ImageGrid

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that the loss ignores (prompt and image tokens)."""

TEXT_TOKEN_TYPE, IMAGE_TOKEN_TYPE, VIDEO_TOKEN_TYPE = 0, 1, 2
"""Values of ``mm_token_type_ids``, as the Qwen-VL models read them."""


# The Qwen2.5-VL chat template (as shipped with Qwen2.5-VL-7B-Instruct): a default system turn
# when none is given, each image as <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL's template renders these conversations the same way but adds no default system
# turn (its tool-call and reasoning branches are left out: the guard uses neither).
QWEN3_VL_CHAT_TEMPLATE = QWEN2_5_VL_CHAT_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}",
    "",
)


@functools.cache
def image_size_kwargs(
    image_processor: Any, min_pixels: int | None, max_pixels: int | None
) -> dict[str, Any]:
    """Image processor call kwargs bounding the resized image area.

    transformers 5 deprecates ``min_pixels=`` / ``max_pixels=`` at call time in favour of
    ``size={"shortest_edge": min, "longest_edge": max}`` (both are areas, despite the names),
    and the processor wants both keys: a bound not given keeps the processor's own.
    """
    if min_pixels is None and max_pixels is None:
        return {}
    own = getattr(image_processor, "size", None)

    def default(key: str) -> Any:
        return own.get(key) if isinstance(own, dict) else getattr(own, key, None)

    size = {
        "shortest_edge": int(min_pixels) if min_pixels is not None else default("shortest_edge"),
        "longest_edge": int(max_pixels) if max_pixels is not None else default("longest_edge"),
    }
    return {"size": {k: v for k, v in size.items() if v is not None}}


def expand_image_tokens(
    input_ids: Sequence[int], image_grid_thw: Any, merge_size: int, image_token_id: int
) -> list[int]:
    """Repeat each image placeholder token once per merged visual token of its image.

    Args:
        input_ids: Token ids with exactly one ``image_token_id`` per image.
        image_grid_thw: ``(n_images, 3)`` patch grids from the image processor.
        merge_size: The image processor's ``merge_size`` (patches merged per side).
        image_token_id: Id of ``<|image_pad|>``.

    Returns:
        The expanded ids.

    Raises:
        ValueError: The number of placeholders differs from the number of images.
    """
    counts = [int(n) // merge_size**2 for n in image_grid_thw.prod(-1).tolist()]
    n_placeholders = sum(1 for t in input_ids if t == image_token_id)
    if n_placeholders != len(counts):
        raise ValueError(
            f"the rendered prompt has {n_placeholders} image placeholders for {len(counts)} "
            "images (does the chat template render {'type': 'image'} content?)"
        )
    per_image = iter(counts)
    out: list[int] = []
    for t in input_ids:
        if t == image_token_id:
            out.extend([t] * next(per_image))
        else:
            out.append(t)
    return out


def token_type_ids(
    input_ids: torch.Tensor, image_token_id: int, video_token_id: int | None = None
) -> torch.Tensor:
    """``mm_token_type_ids``: 1 on image tokens, 2 on video tokens, 0 elsewhere."""
    import torch

    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == image_token_id] = IMAGE_TOKEN_TYPE
    if video_token_id is not None:
        types[input_ids == video_token_id] = VIDEO_TOKEN_TYPE
    return types


def render_chat(
    renderer: Any,
    messages: list[dict[str, Any]],
    completion: str | None = None,
    chat_template: str | None = None,
) -> tuple[str, str]:
    """Render the prompt (with the assistant header) and the completion text after it.

    Args:
        renderer: A tokenizer or processor (anything with ``apply_chat_template``).
        messages: Chat messages; the last turn is the user's.
        completion: The assistant's answer, for training; None at inference.
        chat_template: Overrides the renderer's own template.

    Returns:
        ``(prompt_text, completion_text)``. ``completion_text`` is what the template renders
        after the prompt for an assistant turn holding `completion` (the answer plus the
        end-of-turn token), or "" when `completion` is None.
    """
    kw: dict[str, Any] = {"tokenize": False}
    if chat_template is not None:
        kw["chat_template"] = chat_template
    prompt = renderer.apply_chat_template(messages, add_generation_prompt=True, **kw)
    if completion is None:
        return prompt, ""
    turn = {"role": "assistant", "content": [{"type": "text", "text": completion}]}
    full = renderer.apply_chat_template([*messages, turn], add_generation_prompt=False, **kw)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not render the assistant turn as a continuation of the "
            "generation prompt; cannot split prompt and completion for labels"
        )
    return prompt, full[len(prompt) :]


#: Per tokenizer, the control tokens its chat template renders for each conversation shape.
_TEMPLATE_CONTROLS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Counter[int]]] = (
    weakref.WeakKeyDictionary()
)


def control_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of every token the tokenizer adds on top of its BPE vocabulary: the chat, vision,
    box and end markers, and also the ones Qwen3 adds as non-special (``<think>``,
    ``<tool_call>``, ...), which the tokenizer matches in text just the same."""
    return frozenset(int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}))


def _text_free(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with every text replaced by a neutral word (not "", which a template may
    skip): what the chat template renders on its own."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{**c, "text": "text"} if "text" in c else c for c in content]
        elif isinstance(content, str):
            content = "text"
        out.append({**m, "content": content})
    return out


def check_control_tokens(
    tokenizer: Any,
    prompt_ids: Sequence[int],
    messages: list[dict[str, Any]],
    chat_template: str | None = None,
    *,
    renderer: Any = None,
) -> None:
    """Raise unless `prompt_ids` hold exactly the control tokens the chat template puts there.

    Untrusted text is neutralised where it enters the prompt
    (`guard.prompting.untrusted.untrusted_text`, applied by `PromptTemplate.render`); this is
    the check behind it, on the ids the model will read: a marker in any message text (a
    prompt built some other way, a template holding one) would otherwise become a real token.

    Args:
        tokenizer: The tokenizer that made `prompt_ids`.
        prompt_ids: The rendered prompt's ids, before image placeholders are expanded.
        messages: The messages rendered (image payloads already stripped).
        chat_template: The template used, when not the renderer's own.
        renderer: What rendered the prompt (the stock processor), when not `tokenizer`.

    Raises:
        BackendError: Some control token occurs more or fewer times than the template alone
            produces; the guard's check then fails closed.
    """
    controls = control_token_ids(tokenizer)
    if not controls:
        return
    found = Counter(t for t in prompt_ids if t in controls)
    skeleton = _text_free(messages)
    # The template's own control tokens depend on the conversation's shape only (the texts
    # are neutral words), so they are rendered once per shape, template and vocabulary size.
    key = (json.dumps(skeleton, sort_keys=True, default=str), chat_template,
           renderer is not None, len(controls))
    try:
        per_tokenizer = _TEMPLATE_CONTROLS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        per_tokenizer = {}
    expected = per_tokenizer.get(key)
    if expected is None:
        text, _ = render_chat(renderer if renderer is not None else tokenizer, skeleton, None,
                              chat_template)
        template_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = per_tokenizer[key] = Counter(t for t in template_ids if t in controls)
    if found != expected:
        extra = found - expected
        missing = expected - found
        diff = [f"{tokenizer.convert_ids_to_tokens(t)} {n:+d}" for t, n in extra.items()]
        diff += [f"{tokenizer.convert_ids_to_tokens(t)} {-n:+d}" for t, n in missing.items()]
        raise BackendError(
            "the prompt's text holds control tokens the chat template did not put there ("
            + ", ".join(sorted(diff))
            + "); untrusted text must enter the prompt through PromptTemplate.render"
        )


def _strip_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with image payloads dropped: the template needs only the content types, and
    PIL objects have no place in a Jinja context."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if c.get("type") == "image" else c for c in content]
        out.append({**m, "content": content})
    return out


def build_inputs(
    tokenizer: Any,
    image_processor: Any,
    messages: list[dict[str, Any]],
    images: Sequence[Image.Image] = (),
    *,
    image_token_id: int | None = None,
    video_token_id: int | None = None,
    completion: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    chat_template: str | None = None,
    pixels: Mapping[str, torch.Tensor] | None = None,
    check_controls: bool = True,
) -> dict[str, torch.Tensor]:
    """Model inputs for one conversation, without the stock processor (no torchvision needed).

    Args:
        tokenizer: The model's tokenizer (its chat template renders `messages`).
        image_processor: A ``Qwen2VLImageProcessor`` (PIL or torchvision backend).
        messages: Chat messages in content-list form; ``{"type": "image"}`` entries mark
            where the images go, in order.
        images: The images, in the order of their entries in `messages`.
        image_token_id: Id of ``<|image_pad|>`` (the model config's ``image_token_id``);
            looked up in the tokenizer when None.
        video_token_id: Id of ``<|video_pad|>``, for ``mm_token_type_ids``.
        completion: The assistant's answer; adds ``labels`` for training.
        min_pixels: Lower bound on each resized image's area.
        max_pixels: Upper bound on each resized image's area.
        chat_template: Overrides the tokenizer's chat template.
        pixels: The image processor's ``pixel_values`` and ``image_grid_thw`` for `images`,
            computed beforehand (e.g. kept for a frame judged several times); `images` are
            then not processed again.
        check_controls: Check that the prompt holds exactly the template's control tokens
            (`check_control_tokens`); off only to measure an unprotected prompt.

    Returns:
        ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (each ``(1, L)``), plus
        ``pixel_values`` and ``image_grid_thw`` when there are images and ``labels`` when a
        completion is given.

    Raises:
        BackendError: A message text holds a control token (see `check_control_tokens`).
    """
    import torch

    if image_token_id is None:
        image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    stripped = _strip_images(messages)
    prompt_text, completion_text = render_chat(tokenizer, stripped, completion, chat_template)
    # Special tokens come from the template; the Qwen tokenizer adds none of its own.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if check_controls:
        check_control_tokens(tokenizer, prompt_ids, stripped, chat_template)

    out: dict[str, torch.Tensor] = {}
    if images:
        if pixels is None:
            pixels = image_processor(
                images=list(images),
                return_tensors="pt",
                **image_size_kwargs(image_processor, min_pixels, max_pixels),
            )
        out["pixel_values"] = pixels["pixel_values"]
        out["image_grid_thw"] = pixels["image_grid_thw"]
        # Expanding ids rather than text skips tokenizing thousands of placeholder tokens.
        prompt_ids = expand_image_tokens(
            prompt_ids, pixels["image_grid_thw"], image_processor.merge_size, image_token_id
        )
    elif image_token_id in prompt_ids:
        raise ValueError("the prompt has image placeholders but no images were given")

    ids = list(prompt_ids)
    if completion is not None:
        completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        ids += completion_ids
        out["labels"] = torch.tensor(
            [[IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)], dtype=torch.long
        )
    input_ids = torch.tensor([ids], dtype=torch.long)
    out["input_ids"] = input_ids
    out["attention_mask"] = torch.ones_like(input_ids)
    out["mm_token_type_ids"] = token_type_ids(input_ids, image_token_id, video_token_id)
    return out


def _processor_inputs(
    processor: Any,
    messages: list[dict[str, Any]],
    images: Sequence[Image.Image],
    *,
    image_token_id: int,
    video_token_id: int | None,
    completion: str | None,
    min_pixels: int | None,
    max_pixels: int | None,
    check_controls: bool = True,
) -> dict[str, torch.Tensor]:
    """The same inputs through the stock processor (torchvision installed)."""
    import torch

    stripped = _strip_images(messages)
    prompt_text, completion_text = render_chat(processor, stripped, completion)
    if check_controls:
        # The processor expands image placeholders inside its tokenization; the check wants
        # the ids before that, so the text is tokenized once more (a few hundred tokens).
        tokenizer = processor.tokenizer
        ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        check_control_tokens(tokenizer, ids, stripped, renderer=processor)
    enc = processor(
        text=[prompt_text],
        images=list(images) or None,
        images_kwargs=image_size_kwargs(processor.image_processor, min_pixels, max_pixels),
        return_tensors="pt",
    )
    out = {
        k: enc[k]
        for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        if k in enc
    }
    input_ids = out["input_ids"]
    if completion is not None:
        # Completion ids are appended, not re-tokenized with the prompt, so the prompt's ids
        # match inference exactly (as in the manual route).
        comp = processor.tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        comp_t = torch.tensor([comp], dtype=input_ids.dtype)
        out["labels"] = torch.cat([torch.full_like(input_ids, IGNORE_INDEX), comp_t], dim=1)
        input_ids = torch.cat([input_ids, comp_t], dim=1)
        out["input_ids"] = input_ids
        out["attention_mask"] = torch.ones_like(input_ids)
    # Recomputed rather than taken from the processor: not every version returns it, and it
    # must also cover the appended completion.
    out["mm_token_type_ids"] = token_type_ids(input_ids, image_token_id, video_token_id)
    return out


@dataclass
class QwenInputBuilder:
    """Turns chat prompts into Qwen-VL model inputs; picks the processor route once, at load.

    Attributes:
        tokenizer: The model's tokenizer.
        image_processor: The model's image processor.
        image_token_id: The model config's ``image_token_id``.
        video_token_id: The model config's ``video_token_id``.
        processor: The stock processor, or None for the manual route.
        min_pixels: Lower bound on each resized image's area (None: the processor's default).
        max_pixels: Upper bound on each resized image's area (None: the processor's default).
        chat_template: Overrides the tokenizer's template (manual route only).
        fast_pixels: Compute ``pixel_values`` with `guard.backends.qwen_pixels` (the same
            values as the PIL image processor, several times faster) where it applies.
        check_controls: Refuse a prompt whose ids hold other control tokens than the chat
            template's (`check_control_tokens`). Off only to measure what an unprotected
            prompt does (`python -m guard.bench.injection --raw`).
    """

    tokenizer: Any
    image_processor: Any
    image_token_id: int
    video_token_id: int | None = None
    processor: Any = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    chat_template: str | None = None
    fast_pixels: bool = True
    check_controls: bool = True

    @property
    def uses_processor(self) -> bool:
        return self.processor is not None

    @property
    def image_grid(self) -> ImageGrid | None:
        """The sizes its image processor keeps as they are: the processor's factor and the
        area bounds this builder passes it (the processor's own where `min_pixels` or
        `max_pixels` is None); None for a processor without patch and merge sizes."""
        from guard.imaging import ImageGrid, processor_grid

        own = processor_grid(self.image_processor)
        if own is None:
            return None
        return ImageGrid(
            own.factor,
            self.min_pixels if self.min_pixels is not None else own.min_pixels,
            self.max_pixels if self.max_pixels is not None else own.max_pixels,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        image_token_id: int,
        video_token_id: int | None = None,
        use_processor: UseProcessor = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        **hub_kwargs: Any,
    ) -> QwenInputBuilder:
        """Load the tokenizer and image processor (and the stock processor where allowed).

        Args:
            model_id: Hub id or local folder of the model.
            image_token_id: The model config's ``image_token_id``.
            video_token_id: The model config's ``video_token_id``.
            use_processor: "auto" uses ``AutoProcessor`` where torchvision imports and falls
                back to the manual route if it fails to load; "always" requires it; "never"
                always takes the manual route.
            min_pixels: Lower bound on each resized image's area.
            max_pixels: Upper bound on each resized image's area.
            **hub_kwargs: Passed to every ``from_pretrained`` (e.g. ``revision``).

        Raises:
            BackendError: Something could not be loaded.
        """
        parts = load_processor_parts(model_id, use_processor, **hub_kwargs)
        tokenizer, image_processor = parts.tokenizer, parts.image_processor
        processor, chat_template = parts.processor, parts.chat_template
        return cls(
            tokenizer=tokenizer,
            image_processor=image_processor,
            image_token_id=image_token_id,
            video_token_id=video_token_id,
            processor=processor,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            chat_template=chat_template,
        )

    def encode_images(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The image processor's ``pixel_values`` and ``image_grid_thw`` for `images`, as
        `from_messages` computes them (pass them back as its `pixels`)."""
        if self.fast_pixels:
            from guard.backends.qwen_pixels import fast_pixel_values

            fast = fast_pixel_values(images, self.image_processor, self.min_pixels,
                                     self.max_pixels)
            if fast is not None:
                return fast
        out: dict[str, torch.Tensor] = self.image_processor(
            images=list(images),
            return_tensors="pt",
            **image_size_kwargs(self.image_processor, self.min_pixels, self.max_pixels),
        )
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def from_messages(
        self,
        messages: list[dict[str, Any]],
        images: Sequence[Image.Image] = (),
        completion: str | None = None,
        *,
        pixels: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Inputs for chat `messages` whose ``{"type": "image"}`` entries match `images`.

        `pixels` (from `encode_images`) skips processing the images again.
        """
        if pixels is None and images and self.fast_pixels:
            from guard.backends.qwen_pixels import fast_pixel_values

            pixels = fast_pixel_values(images, self.image_processor, self.min_pixels,
                                       self.max_pixels)
        common: dict[str, Any] = {
            "image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
            "completion": completion, "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels, "check_controls": self.check_controls,
        }
        template = self.chat_template
        if self.processor is not None:
            if pixels is None or not images:
                return _processor_inputs(self.processor, messages, images, **common)
            # Given pixels, the placeholders are expanded by id, as the manual route does; the
            # stock processor's route gives the same tensors (held by the tests).
            template = getattr(self.processor, "chat_template", None)
        return build_inputs(self.tokenizer, self.image_processor, messages, images, **common,
                            chat_template=template, pixels=pixels if images else None)

    def __call__(
        self, prompt: ChatPrompt, completion: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Inputs for a guard prompt (system, then the images, then the user text)."""
        return self.from_messages(prompt.messages(), prompt.images, completion)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
