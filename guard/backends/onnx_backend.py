"""The ONNX Runtime judge: a Qwen-VL model exported by ``guard export onnx``.

    guard export onnx --model DIR --out ONNX_DIR --image-size 640x480
    guard check --backend onnx --model ONNX_DIR --image frame.jpg --action "turn on the stove"

Runs the exported vision graph (one image at the export's fixed resolution: every frame is
resized to it) and the decoder graph (KV cache, dynamic lengths) through the same verdict-first
engine as the transformers backend (`guard.backends.engine`): verdict from the prefill, prefix
and frame caches, batches. M-RoPE position ids are computed in Python, the input embeddings are
looked up in numpy. Preprocessing reuses the Qwen-VL tokenizer and image processor, so torch and
transformers are still needed (for the tokenizer, not for the model).

Execution providers: ``model.device`` "auto" uses CUDA when onnxruntime-gpu sees a GPU and the CPU
otherwise, "cpu" the CPU only, "cuda" / "cuda:N" CUDA, "tensorrt" TensorRT (then CUDA, CPU).
Keys and values pass through host memory between steps (no I/O binding yet), which costs little
on a CPU and a copy per token on a GPU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from guard._deps import require
from guard.backends.base import JudgeOutput, JudgeRequest
from guard.backends.engine import VerdictFirstEngine, verdict_first_tokens
from guard.backends.onnx_export import DECODER_FILE, EMBED_FILE, META_FILE, VISION_FILE
from guard.config import ModelConfig
from guard.errors import BackendError, BackendTimeout, ConfigError
from guard.imaging import ImageGrid

if TYPE_CHECKING:
    from PIL import Image

    from guard.config import GuardConfig

log = logging.getLogger(__name__)

_AT_EXPORT = "the onnx backend runs an export, which fixes it: 'guard export onnx {flag}'"


class OnnxModelConfig(ModelConfig):
    """`model:` for the onnx backend: the shared fields (``id`` is the export folder) and
    where the graphs run. What a transformers model is loaded with (adapter, dtype) is fixed
    by the export."""

    backend: str = "onnx"
    device: str = "auto"
    prefix_cache: bool = True
    frame_cache: int = Field(default=4, ge=0, le=256)

    foreign_hints: ClassVar[dict[str, str]] = {
        "adapter": _AT_EXPORT.format(flag="--adapter PATH") + " merges it in",
        "dtype": _AT_EXPORT.format(flag="--dtype fp32|fp16"),
        "quantization": "bitsandbytes quantization is for the transformers backend; "
        + _AT_EXPORT.format(flag="--dtype fp16") + " halves the weights",
    }


@dataclass
class _OrtImage:
    embeds: np.ndarray  # (tokens, hidden)
    deepstack: np.ndarray | None  # (layers, tokens, hidden), Qwen3-VL only


def providers_for(device: str, available: Sequence[str]) -> list[Any]:
    """ONNX Runtime execution providers for a ``model.device`` value.

    Raises:
        BackendError: The device asks for a provider this onnxruntime lacks.
    """
    cpu = "CPUExecutionProvider"
    if device == "cpu":
        return [cpu]
    if device == "auto":
        return ["CUDAExecutionProvider", cpu] if "CUDAExecutionProvider" in available else [cpu]
    if device == "tensorrt" or device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        wanted = ["CUDAExecutionProvider"]
        if device == "tensorrt":
            wanted.insert(0, "TensorrtExecutionProvider")
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(
                f"model.device = {device!r} needs {', '.join(missing)}, which this onnxruntime "
                f"does not have (it has {', '.join(available)}); install onnxruntime-gpu"
            )
        return [(p, {"device_id": index}) for p in wanted] + [cpu]
    raise BackendError(f"model.device = {device!r}: expected auto, cpu, cuda[:N] or tensorrt")


def _names(providers: Sequence[Any]) -> str:
    return ", ".join(p[0] if isinstance(p, tuple) else str(p) for p in providers)


class OrtRunner:
    """`guard.backends.engine.Runner` over the exported graphs; KV states are numpy arrays."""

    def __init__(
        self,
        folder: str | Path,
        meta: dict[str, Any],
        providers: Sequence[Any],
        threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime", "the onnx backend")
        folder = Path(folder)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are not actionable
        if threads is not None:
            # On a machine shared with other work, spinning worker threads stall behind the
            # other processes; a fixed count without spinning keeps latency steady.
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.dtype = np.dtype(meta.get("dtype", "float32"))
        try:
            self.vision = ort.InferenceSession(
                str(folder / VISION_FILE), options, providers=list(providers)
            )
            self.decoder = ort.InferenceSession(
                str(folder / DECODER_FILE), options, providers=list(providers)
            )
            self.embed = np.load(folder / EMBED_FILE, mmap_mode="r")
        except Exception as exc:
            if self.dtype == np.float16 and "NOT_IMPLEMENTED" in str(exc):
                raise BackendError(
                    f"the ONNX export in {folder} is float16, and an operator in it has no "
                    f"float16 kernel on {_names(providers)}: run float16 exports on CUDA "
                    "(model.device: cuda, onnxruntime-gpu), or export with --dtype fp32 for "
                    f"the CPU ({str(exc).splitlines()[0][:300]})"
                ) from exc
            raise BackendError(f"cannot load the ONNX export in {folder}: {exc}") from exc
        self.meta = meta
        self.grid = [int(x) for x in meta["image_grid_thw"]]
        self.image_token_id = int(meta["image_token_id"])
        self.n_layers = int(meta["num_layers"])
        self.n_kv = int(meta["num_key_value_heads"])
        self.head_dim = int(meta["head_dim"])
        self.hidden = int(meta["hidden_size"])
        self.n_deepstack = int(meta["deepstack_layers"])
        self.past_names = [
            f"past_{kind}_{i}" for i in range(self.n_layers) for kind in ("key", "value")
        ]

    @property
    def providers(self) -> list[str]:
        names: list[str] = self.decoder.get_providers()
        return names

    def encode_images(
        self, pixels: Sequence[np.ndarray], grids: Sequence[np.ndarray]
    ) -> list[_OrtImage]:
        out = []
        for pv, grid in zip(pixels, grids, strict=True):
            if [int(x) for x in np.asarray(grid).reshape(-1)] != self.grid:
                raise BackendError(
                    f"an image with patch grid {list(np.asarray(grid).reshape(-1))} reached the "
                    f"vision graph exported for grid {self.grid} (image size "
                    f"{self.meta['image_size']})"
                )
            res = self.vision.run(None, {"pixel_values": np.ascontiguousarray(pv, self.dtype)})
            out.append(_OrtImage(res[0], res[1] if self.n_deepstack else None))
        return out

    def forward(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        mask: np.ndarray | None,
        past: Any,
        images: Sequence[_OrtImage],
    ) -> tuple[np.ndarray, Any]:
        b, t = ids.shape
        embeds = np.asarray(self.embed[ids], dtype=self.dtype)
        is_image = ids == self.image_token_id
        if images:
            embeds[is_image] = np.concatenate([f.embeds for f in images])
        if past is None:
            past = [np.zeros((b, self.n_kv, 0, self.head_dim), self.dtype)] * (2 * self.n_layers)
        n_past = past[0].shape[2]
        if mask is None:
            mask = np.ones((b, n_past + t), dtype=np.int64)
        feeds: dict[str, np.ndarray] = {
            "inputs_embeds": embeds,
            "position_ids": np.ascontiguousarray(positions, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(mask, dtype=np.int64),
        }
        for name, arr in zip(self.past_names, past, strict=True):
            feeds[name] = np.ascontiguousarray(arr)
        if self.n_deepstack:
            dense = np.zeros((self.n_deepstack, b, t, self.hidden), self.dtype)
            if images:
                dense[:, is_image] = np.concatenate(
                    [f.deepstack for f in images if f.deepstack is not None], axis=1
                )
            feeds["deepstack_embeds"] = dense
        outs = self.decoder.run(None, feeds)
        return np.asarray(outs[0], dtype=np.float32), list(outs[1:])

    def snapshot(self, past: Any, length: int) -> list[np.ndarray]:
        # Every run returns fresh arrays, so slices of them are never written again.
        return [a[:1, :, :length] for a in past]

    def restore(self, stored: list[np.ndarray], batch: int) -> list[np.ndarray]:
        if batch == 1:
            return list(stored)
        return [np.repeat(a, batch, axis=0) for a in stored]


class OnnxBackend:
    """A Qwen-VL judge exported by ``guard export onnx``, run by ONNX Runtime."""

    name = "onnx"

    def __init__(
        self,
        folder: str,
        *,
        device: str = "auto",
        max_new_tokens: int = 128,
        prefix_cache: bool = True,
        frame_cache: int = 4,
        threads: int | None = None,
    ) -> None:
        """Load an export folder.

        Args:
            folder: What ``guard export onnx --out`` wrote.
            device: "auto", "cpu", "cuda[:N]" or "tensorrt" (see the module docstring).
            max_new_tokens: Cap on generated tokens.
            prefix_cache: Reuse the keys and values of the fixed system prompt.
            frame_cache: Frames whose vision features and prompt prefix are kept (0: off).
            threads: ONNX Runtime intra-op threads (None: its default, one per core).

        Raises:
            BackendError: The folder is not a readable export.
            MissingExtraError: onnxruntime (or torch/transformers for preprocessing) is missing.
        """
        ort = require("onnxruntime", "the onnx backend")
        require("transformers", "the onnx backend's tokenizer and image processor")
        require("torch", "the onnx backend's tokenizer and image processor")
        from guard.backends.qwen_inputs import QwenInputBuilder

        path = Path(folder).expanduser()
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise BackendError(
                f"{folder} is not an ONNX export (no {META_FILE}); write one with "
                "'guard export onnx --model DIR --out DIR --image-size WxH'"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        self._folder = str(folder)
        self._max_new_tokens = max_new_tokens
        self.image_size = (int(self.meta["image_size"][0]), int(self.meta["image_size"][1]))
        self.runner = OrtRunner(
            path, self.meta, providers_for(device, ort.get_available_providers()), threads
        )
        # ONNX Runtime drops a provider whose libraries fail to load (CUDA, cuDNN) with only
        # a log line and runs on the CPU: a device asked for by name must really be in use.
        if device != "auto" and device != "cpu" and (
                "CUDAExecutionProvider" not in self.runner.providers):
            raise BackendError(
                f"model.device = {device!r}, but the ONNX session runs on "
                f"{', '.join(self.runner.providers)}: the CUDA provider did not load (check the "
                "CUDA and cuDNN libraries onnxruntime-gpu needs), or use model.device: auto"
            )
        # The processor's own size bounds, as at export: they map image_size to the graph's grid.
        self.inputs = QwenInputBuilder.from_pretrained(
            str(path),
            image_token_id=int(self.meta["image_token_id"]),
            video_token_id=self.meta.get("video_token_id"),
            use_processor="never",
        )
        self.tokenizer = self.inputs.tokenizer
        # The vision graph's one input size in pixels: its patch grid (from the export) times
        # the patch size. Frames are resized straight to it, which the processor then keeps.
        own = self.inputs.image_grid
        patch = int(self.inputs.image_processor.patch_size)
        _, grid_h, grid_w = (int(x) for x in self.meta["image_grid_thw"])
        self.graph_size = (grid_w * patch, grid_h * patch)
        self.image_grid = ImageGrid(
            own.factor if own else patch * int(self.meta["spatial_merge_size"]),
            own.min_pixels if own else None, own.max_pixels if own else None,
            size=self.graph_size,
        )
        self._verdict_ids: dict[tuple[str, ...], dict[str, int] | None] = {}
        self.engine = VerdictFirstEngine(
            self.runner,
            self.inputs,
            eos_token_ids=self.meta["eos_token_ids"],
            pad_token_id=self.meta["pad_token_id"],
            spatial_merge_size=self.meta["spatial_merge_size"],
            verdict_token_ids=self.verdict_token_ids,
            prefix_cache=prefix_cache,
            frame_cache=frame_cache,
        )
        self._closed = False
        log.info("loaded ONNX export %s (%s, %s, providers %s)", folder, self.meta["model_type"],
                 "x".join(map(str, self.image_size)), ", ".join(self.runner.providers))

    @classmethod
    def from_config(cls, config: GuardConfig) -> OnnxBackend:
        """Build from `config.model` (``model.id`` is the export folder).

        Raises:
            ConfigError: ``model.id`` is not set. (An adapter, a quantization or a dtype
                belong to the export, ``guard export onnx``: `OnnxModelConfig` has no such
                fields, so asking for them fails when the config is loaded.)
        """
        from guard.backends import model_options

        m = model_options(config, OnnxModelConfig)
        if not m.id:
            raise ConfigError(
                "model.id is not set: the onnx backend needs the folder written by "
                "'guard export onnx'"
            )
        return cls(
            m.id,
            device=m.device,
            max_new_tokens=m.max_new_tokens,
            prefix_cache=m.prefix_cache,
            frame_cache=m.frame_cache,
        )

    @property
    def model_id(self) -> str:
        return self._folder

    def verdict_token_ids(self, words: tuple[str, ...]) -> dict[str, int] | None:
        """First token id of each verdict word, or None if two words share one."""
        if words not in self._verdict_ids:
            self._verdict_ids[words] = verdict_first_tokens(self.tokenizer, words)
        return self._verdict_ids[words]

    def fit(self, image: Image.Image) -> Image.Image:
        """`image` at the vision graph's only input size (`graph_size`: the export's
        ``--image-size`` on the processor's grid), resampled once, as the guard's core does."""
        if image.size == self.graph_size and image.mode == "RGB":
            return image
        from PIL import Image as PILImage

        return image.convert("RGB").resize(self.graph_size, PILImage.Resampling.BICUBIC)

    def _fitted(self, request: JudgeRequest) -> JudgeRequest:
        images = tuple(self.fit(im) for im in request.prompt.images)
        return replace(request, prompt=replace(request.prompt, images=images))

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        """Answer one request, verdict first (see `TransformersBackend.judge`).

        Raises:
            BackendTimeout: The deadline passed before or during generation.
            BackendError: Preprocessing or inference failed, or the backend is closed.
        """
        self._check(request)
        return self.engine.judge(self._fitted(request), self._max_new_tokens)

    def warmup(self, request: JudgeRequest) -> None:
        """Answer one throwaway request so first-call costs (session warm-up, caches) stay
        out of the first real check's deadline."""
        self.judge(request)

    def judge_batch(self, requests: Sequence[JudgeRequest]) -> list[JudgeOutput]:
        """Answer several requests in one batch (see `TransformersBackend.judge_batch`)."""
        for r in requests:
            self._check(r)
        return self.engine.judge_batch([self._fitted(r) for r in requests],
                                       self._max_new_tokens)

    def close(self) -> None:
        """Stop background rationales and drop the caches."""
        self._closed = True
        self.engine.close()

    def _check(self, request: JudgeRequest) -> None:
        if self._closed:
            raise BackendError("the onnx backend is closed")
        if request.deadline is not None and self.engine.clock() >= request.deadline:
            raise BackendTimeout("deadline passed before the call started")
