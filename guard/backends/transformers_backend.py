"""The in-process judge: a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) run by transformers.

Loads a hub id or a local folder (``AutoConfig`` tells the architecture), optionally with a
PEFT adapter and bitsandbytes 8-bit / 4-bit weights, and answers with greedy decoding through
`guard.backends.engine`: the verdict and the probability of each verdict word come from the
prefill's logits (``rationale: sync | async | off`` decides what happens to the rest of the
answer), the system prompt's and each frame's keys and values are cached, several requests can
run as one batch (`judge_batch`), and decoding stops as soon as the request's deadline passes,
so a call the guard has already given up on stops using the GPU.

    from guard.config import GuardConfig
    cfg = GuardConfig().with_overrides(**{"model.id": "Qwen/Qwen2.5-VL-7B-Instruct",
                                          "model.quantization": "4bit"})
    backend = TransformersBackend.from_config(cfg)
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from guard._deps import require
from guard.backends.base import JudgeOutput, JudgeRequest
from guard.backends.engine import VerdictFirstEngine, verdict_first_tokens
from guard.backends.hf_loading import MODEL_CLASSES as MODEL_CLASSES  # re-exported
from guard.backends.hf_loading import (
    UseProcessor,
    load_adapter,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_local,
)
from guard.backends.qwen_inputs import QwenInputBuilder
from guard.config import ModelConfig
from guard.errors import BackendError, BackendTimeout, ConfigError
from guard.imaging import ImageGrid, pixel_bounds

if TYPE_CHECKING:
    import torch

    from guard.config import GuardConfig

log = logging.getLogger(__name__)


class TransformersModelConfig(ModelConfig):
    """`model:` for the transformers backend: the shared fields (``id`` is a hub id or a
    local folder) and how the model is loaded and run."""

    backend: str = "transformers"
    adapter: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    attn_implementation: str | None = None
    use_processor: UseProcessor = "auto"
    prefix_cache: bool = True
    frame_cache: int = Field(default=4, ge=0, le=256)

# The clock deadlines are measured on (`JudgeRequest.deadline` is a time.monotonic() instant).
_clock = time.monotonic


@functools.cache
def _deadline_criteria_class() -> type:
    """The StoppingCriteria class, defined on first use so this module imports without
    transformers."""
    import torch
    from transformers import StoppingCriteria

    class DeadlineCriteria(StoppingCriteria):  # type: ignore[misc]
        """Stops every sequence once the clock reaches the deadline; `fired` tells it did."""

        def __init__(self, deadline: float | None) -> None:
            self.deadline = deadline
            self.fired = False

        def __call__(
            self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any
        ) -> torch.BoolTensor:
            if self.deadline is not None and _clock() >= self.deadline:
                self.fired = True
            return torch.full(
                (input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device
            )

    return DeadlineCriteria


def _make_deadline_criteria(deadline: float | None) -> Any:
    """A StoppingCriteria that ends generation once `deadline` (monotonic) has passed."""
    return _deadline_criteria_class()(deadline)


@dataclass
class _ImageFeatures:
    """The vision encoder's output for one image: the merged tokens and, for Qwen3-VL, the
    deepstack features fed to the first decoder layers."""

    embeds: Any
    deepstack: list[Any]


def linear_patch_embed(model: Any) -> bool:
    """Run the vision tower's patch embedding as the matrix product it is.

    Qwen-VL embeds patches with a Conv3d whose kernel equals its stride and covers the whole
    flattened patch (channels x temporal x 14 x 14 or 16 x 16, the layout of ``pixel_values``'
    rows), so the convolution is ``pixel_values @ weight.T``. PyTorch's CPU convolution takes
    about 3x as long for it (15 ms against 5 ms for a 640 x 480 frame on one core); the
    outputs agree to float rounding (a few 1e-6). Returns whether the module was patched (a
    model without this layout is left alone).
    """
    import torch

    visual = getattr(getattr(model, "model", model), "visual", None)
    embed: Any = getattr(visual, "patch_embed", None)
    proj = getattr(embed, "proj", None)
    if not isinstance(proj, torch.nn.Conv3d) or getattr(embed, "_guard_linear", False):
        return False
    if tuple(proj.kernel_size) != tuple(proj.stride) or any(proj.padding) or proj.groups != 1:
        return False
    functional = torch.nn.functional

    def forward(hidden_states: Any) -> Any:
        weight = proj.weight
        x = hidden_states.to(weight.dtype).reshape(-1, weight[0].numel())
        return functional.linear(x, weight.reshape(weight.shape[0], -1), proj.bias)

    embed.forward = forward
    embed._guard_linear = True
    return True


class TorchRunner:
    """`guard.backends.engine.Runner` over a transformers Qwen-VL model.

    Position ids are always passed, so the model's own ``rope_deltas`` state is never read or
    written (a bare ``generate`` on the same model is unaffected).
    """

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.device = device
        self.dtype = dtype
        # The model's own vision output class, rebuilt around cached features in `forward`
        # (the model reads its fields and converts it like any model output).
        self._vision_output_cls: Any = None

    def encode_images(
        self, pixels: Sequence[np.ndarray], grids: Sequence[np.ndarray]
    ) -> list[_ImageFeatures]:
        torch = self.torch
        pv = torch.from_numpy(np.concatenate(pixels)).to(self.device, self.dtype)
        grid = torch.from_numpy(np.stack(grids).astype(np.int64)).to(self.device)
        with torch.inference_mode():
            out = self.model.get_image_features(pv, grid, return_dict=True)
        self._vision_output_cls = type(out)
        pooled = list(out.pooler_output)
        layers = list(getattr(out, "deepstack_features", None) or [])
        return [
            _ImageFeatures(pooled[i], [layer[i] for layer in layers]) for i in range(len(pooled))
        ]

    def forward(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        mask: np.ndarray | None,
        past: Any,
        images: Sequence[_ImageFeatures],
    ) -> tuple[np.ndarray, Any]:
        torch = self.torch
        from transformers import DynamicCache

        if past is None:
            past = DynamicCache(config=self.model.config)
        kwargs: dict[str, Any] = {}
        if images:
            n_layers = len(images[0].deepstack)
            fields: dict[str, Any] = {"pooler_output": tuple(f.embeds for f in images)}
            if n_layers:
                fields["deepstack_features"] = [
                    tuple(f.deepstack[i] for f in images) for i in range(n_layers)
                ]
            kwargs["mm_encoder_outputs"] = {"image": self._vision_output_cls(**fields)}
        if mask is not None:
            kwargs["attention_mask"] = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(np.ascontiguousarray(ids)).to(self.device),
                position_ids=torch.from_numpy(np.ascontiguousarray(positions)).to(self.device),
                cache=past,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        logits = out.logits[:, -1, :].float().cpu().numpy()
        return logits, out.cache

    def snapshot(self, past: Any, length: int) -> list[tuple[Any, Any]]:
        # Views, not copies: a DynamicCache grows by concatenation into new tensors, so later
        # forwards never write into what is kept here.
        return [(kv.keys[:1, :, :length], kv.values[:1, :, :length]) for kv in past.layers]

    def restore(self, stored: list[tuple[Any, Any]], batch: int) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in zip(cache.layers, stored, strict=True):
            layer.lazy_initialization(k, v)
            if batch > 1:
                k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
            layer.keys, layer.values = k, v
        return cache


class TransformersBackend:
    """A Qwen-VL judge run in-process with transformers.

    Calls are serialised (one forward at a time on the model, a check before any background
    rationale decoding); a call whose deadline passes while it waits does no work.
    """

    name = "transformers"

    def __init__(
        self,
        model_id: str,
        *,
        adapter: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        quantization: str = "none",
        attn_implementation: str | None = None,
        max_new_tokens: int = 128,
        use_processor: UseProcessor = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        prefix_cache: bool = True,
        frame_cache: int = 4,
    ) -> None:
        """Load the model, tokenizer and image processor.

        Args:
            model_id: Hub id or local folder.
            adapter: A PEFT adapter folder or hub id, applied on top of the model.
            dtype: "auto" (bfloat16 on a CUDA device that supports it, float16 on one that
                does not, float32 elsewhere), "float32", "bfloat16" or "float16".
            device: "auto" (cuda when available, else cpu) or a torch device string.
            quantization: "none", "8bit" or "4bit" (bitsandbytes, NF4 with double
                quantization; the compute dtype is `dtype`).
            attn_implementation: Passed to ``from_pretrained`` (e.g. "sdpa",
                "flash_attention_2"); None lets transformers choose.
            max_new_tokens: Cap on generated tokens; a request's own cap applies within it.
            use_processor: "auto", "always" or "never" use the stock ``AutoProcessor``
                (see ``guard.backends.qwen_inputs``).
            min_pixels: Lower bound on each resized image's area (``image.min_pixels``); the
                processor's own applies where it is higher.
            max_pixels: Upper bound on each resized image's area (``image.max_pixels``); the
                processor's own applies where it is lower.
            prefix_cache: Reuse the keys and values of the fixed system prompt.
            frame_cache: Frames whose preprocessing, vision features and prompt prefix through
                the image are kept for the next proposal on the same frame (0: off).

        Raises:
            BackendError: The model, adapter or preprocessing could not be loaded.
            MissingExtraError: torch/transformers, peft or bitsandbytes is not installed.
        """
        torch = require("torch", "the transformers backend")
        require("transformers", "the transformers backend")
        self._torch = torch
        self._model_id = model_id
        self._adapter = adapter
        self._max_new_tokens = max_new_tokens
        self._verdict_ids: dict[tuple[str, ...], dict[str, int] | None] = {}

        path = resolve_local(model_id, "model")
        # Adapter problems are found before the (possibly minutes-long) base model load.
        adapter_path = resolve_local(adapter, "adapter") if adapter else None
        if adapter:
            require("peft", "model.adapter (LoRA)")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        model, config = load_model(
            path, dtype=self.dtype, quantization=quantization,
            attn_implementation=attn_implementation, device_map={"": str(self.device)},
            what="the transformers backend",
        )
        if adapter_path:
            # Merged into unquantized weights (no extra matmuls); kept apart on quantized ones.
            model = load_adapter(model, adapter_path, merge=quantization == "none")
        model.eval()
        linear_patch_embed(model)
        self.model: Any = model
        self.quantization = quantization

        self.inputs = QwenInputBuilder.from_pretrained(
            path,
            image_token_id=config.image_token_id,
            video_token_id=getattr(config, "video_token_id", None),
            use_processor=use_processor,
        )
        # The one pixel budget (guard.imaging.pixel_bounds): the guard's bounds and the model
        # folder's processor bounds, whichever is tighter, so that a frame the guard resized
        # to `image_grid` passes the processor unchanged.
        self.inputs.min_pixels, self.inputs.max_pixels = pixel_bounds(
            min_pixels, max_pixels, self.inputs.image_grid
        )
        self.tokenizer = self.inputs.tokenizer
        self._generation_config = self._greedy_config(model.generation_config)
        eos = self._generation_config.eos_token_id
        self.runner = TorchRunner(model, self.device, self.dtype)
        self.engine = VerdictFirstEngine(
            self.runner,
            self.inputs,
            eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
            pad_token_id=self._generation_config.pad_token_id,
            spatial_merge_size=config.vision_config.spatial_merge_size,
            verdict_token_ids=self.verdict_token_ids,
            prefix_cache=prefix_cache,
            frame_cache=frame_cache,
            # Looked up at each call, so a patched module clock (tests) is the one used.
            clock=lambda: _clock(),
        )
        log.info(
            "loaded %s (%s, %s on %s, quantization %s, inputs via %s)",
            self.model_id,
            config.model_type,
            str(self.dtype).removeprefix("torch."),
            self.device,
            quantization,
            "processor" if self.inputs.uses_processor else "tokenizer + image processor",
        )

    @classmethod
    def from_config(cls, config: GuardConfig) -> TransformersBackend:
        """Build from `config.model` and `config.image`.

        Raises:
            ConfigError: ``model.id`` is not set.
        """
        from guard.backends import model_options

        m = model_options(config, TransformersModelConfig)
        if not m.id:
            raise ConfigError(
                "model.id is not set: the transformers backend needs a hub id or a model folder"
            )
        return cls(
            m.id,
            adapter=m.adapter,
            dtype=m.dtype,
            device=m.device,
            quantization=m.quantization,
            attn_implementation=m.attn_implementation,
            max_new_tokens=m.max_new_tokens,
            use_processor=m.use_processor,
            min_pixels=config.image.min_pixels,
            max_pixels=config.image.max_pixels,
            prefix_cache=m.prefix_cache,
            frame_cache=m.frame_cache,
        )

    @property
    def image_grid(self) -> ImageGrid | None:
        """The sizes the model's image processor keeps (its patch grid under the pixel budget):
        the guard resizes each frame straight to one (`guard.imaging.resize_for_judge`)."""
        return self.inputs.image_grid

    # -- loading ---------------------------------------------------------------------------

    def _greedy_config(self, base: Any) -> Any:
        """The model's generation config made deterministic: greedy, no sampling knobs."""
        cfg = base.__class__.from_dict(base.to_dict())
        cfg.do_sample = False
        cfg.num_beams = 1
        cfg.temperature = None
        cfg.top_p = None
        cfg.top_k = None
        if cfg.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            cfg.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        if cfg.eos_token_id is None:
            cfg.eos_token_id = self.tokenizer.eos_token_id
        return cfg

    def _generation_config_for(self, max_new_tokens: int) -> Any:
        # A copy per call: generate() deprecates mixing a config object with loose arguments,
        # and calls must not share mutable state.
        cfg = copy.deepcopy(self._generation_config)
        cfg.max_new_tokens = max_new_tokens
        return cfg

    # -- Backend interface -----------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return f"{self._model_id}+{self._adapter}" if self._adapter else self._model_id

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        """Answer one request with greedy decoding, verdict first.

        ``request.rationale`` "sync" returns the whole answer; "off" only the verdict word;
        "async" the verdict word with `JudgeOutput.rationale`, a future of the whole answer.
        When the model's greedy first token is no verdict word, every mode returns the whole
        answer (the strict parser then decides).

        Raises:
            BackendTimeout: The deadline passed before or during generation.
            BackendError: Preprocessing or generation failed, or the backend is closed.
        """
        self._check_deadline(request, "before the call started")
        if self.model is None:
            raise BackendError("the transformers backend is closed")
        out = self.engine.judge(request, self._max_new_tokens)
        _add_generate_timing(out.timings_ms)
        return out

    def warmup(self, request: JudgeRequest) -> None:
        """Answer one throwaway request: the first call in a process pays for kernel choice,
        allocator growth and tokenizer caches (3.6 s instead of ~50 ms for the embedded
        model on 2 CPU cores), which must not count against a real check's deadline."""
        self.judge(request)

    def judge_batch(self, requests: Sequence[JudgeRequest]) -> list[JudgeOutput]:
        """Answer several requests in one batch (replay, benchmarks): the same answers as one
        by one, in one forward per step. A request with ``rationale="off"`` gets its verdict
        only; the others (async included) their whole answer.

        Raises:
            BackendTimeout: The earliest deadline of the batch passed.
            BackendError: Preprocessing or generation failed, or the backend is closed.
        """
        for r in requests:
            self._check_deadline(r, "before the call started")
        if self.model is None:
            raise BackendError("the transformers backend is closed")
        outs = self.engine.judge_batch(requests, self._max_new_tokens)
        for o in outs:
            _add_generate_timing(o.timings_ms)
        return outs

    def close(self) -> None:
        """Stop background rationales, drop the model and free accelerator memory."""
        self.engine.close()
        with self.engine.lock.critical():
            self.model = None
            self.runner.model = None
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()

    # -- helpers ---------------------------------------------------------------------------

    def _check_deadline(self, request: JudgeRequest, when: str) -> None:
        if request.deadline is not None and _clock() >= request.deadline:
            raise BackendTimeout(f"deadline passed {when}")

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in out:
            # The vision tower runs in the model dtype (never quantized, see NOT_QUANTIZED).
            out["pixel_values"] = out["pixel_values"].to(self.dtype)
        return out

    def verdict_token_ids(self, words: tuple[str, ...]) -> dict[str, int] | None:
        """First token id of each verdict word, or None if two words share one.

        The answer starts right after the assistant header's newline, so each word is
        tokenized on its own (no leading space), as it appears there.
        """
        if words not in self._verdict_ids:
            self._verdict_ids[words] = verdict_first_tokens(self.tokenizer, words)
        return self._verdict_ids[words]


def _add_generate_timing(timings: dict[str, float]) -> None:
    """`generate`: model time (vision, prefill, decoding), as the key earlier versions gave."""
    timings["generate"] = sum(timings.get(k, 0.0) for k in ("vision", "prefill", "decode"))
