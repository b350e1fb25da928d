"""Export a Qwen-VL judge (Qwen2.5-VL, Qwen3-VL) for ONNX Runtime.

    guard export onnx --model DIR --out DIR --image-size 640x480

Writes, into one folder that ``model.backend: onnx`` with ``model.id: DIR`` loads:

- ``vision.onnx``: the vision tower for one image at a fixed camera resolution. Its patch grid
  drives data-dependent control flow (window attention, position interpolation) that only
  traces at a fixed size, so the size is part of the export: the onnx backend resizes every
  frame to it.
- ``decoder.onnx``: the language model and LM head with a KV cache, dynamic in batch, new tokens
  and cached tokens. It takes input embeddings, 3-D M-RoPE position ids (computed in Python by
  `guard.backends.mrope`, as the engine does for PyTorch), a 2-D attention mask and the past
  keys/values, and returns the last position's logits and the grown keys/values. Qwen3-VL's
  deepstack features enter as a dense ``(layers, batch, tokens, hidden)`` input (zero on text).
- ``embed_tokens.npy``: the input embedding table (looked up in numpy, where image features are
  put in place of the image tokens).
- the tokenizer, image processor, config and ``guard_onnx.json`` (shapes, ids, the export's own
  parity check against PyTorch).

Both graphs use the legacy TorchScript exporter (the vision tower does not export with the
dynamo one). Weights, activations and the KV cache are float32, or float16 with ``dtype=
"float16"`` (``--dtype fp16``: half the size; the graphs' float inputs and outputs are then
float16 too, and the onnx backend casts at the boundary). Models above 2 GB need ONNX external
data, which this exporter does not write: export small models here, or quantize the exported
graphs separately.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guard.errors import BackendError, UsageError
from guard.types import VERDICT_WORDS

log = logging.getLogger(__name__)

META_FILE = "guard_onnx.json"
VISION_FILE = "vision.onnx"
DECODER_FILE = "decoder.onnx"
EMBED_FILE = "embed_tokens.npy"
FORMAT_VERSION = 1
#: ``--dtype`` spellings -> the dtype recorded in guard_onnx.json.
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16"}

_SMALL_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "generation_config.json", "config.json",
    "training_run_config.yaml",  # the prompt template the judge was trained with
)


@dataclass
class ExportResult:
    """What `export_onnx` wrote.

    Attributes:
        out: The export folder.
        meta: The contents of ``guard_onnx.json``.
        seconds: Wall time of the export.
    """

    out: Path
    meta: dict[str, Any]
    seconds: float


def parse_image_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)``.

    Raises:
        UsageError: Not two positive integers joined by "x".
    """
    parts = text.lower().replace("*", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--image-size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w <= 0 or h <= 0:
        raise UsageError(f"--image-size {text!r}: width and height must be positive")
    return w, h


def parse_dtype(text: str) -> str:
    """``"fp16"`` -> ``"float16"`` (the graphs' float type).

    Raises:
        UsageError: Not one of fp32, float32, fp16, float16.
    """
    try:
        return DTYPES[text.lower()]
    except KeyError:
        raise UsageError(f"--dtype {text!r}: expected fp32 or fp16") from None


def _dense_deepstack(hidden_states: Any, visual_pos_masks: Any, visual_embeds: Any) -> Any:
    """Qwen3-VL's deepstack step for the export: the features arrive dense, zero on text
    tokens, so adding them equals the model's masked scatter-add without boolean indexing."""
    return hidden_states + visual_embeds


def _decoder_module(model: Any) -> Any:
    import torch
    from transformers import DynamicCache

    lm = model.model.language_model
    head = model.get_output_embeddings()
    n_layers = model.config.text_config.num_hidden_layers
    n_deepstack = len(getattr(model.config.vision_config, "deepstack_visual_indexes", None) or [])

    class Decoder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.lm, self.head = lm, head

        def forward(
            self, inputs_embeds: Any, position_ids: Any, attention_mask: Any, *rest: Any
        ) -> tuple[Any, ...]:
            cache = DynamicCache(config=model.config)
            for i, layer in enumerate(cache.layers):
                k, v = rest[2 * i], rest[2 * i + 1]
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k, v
            kwargs: dict[str, Any] = {}
            if n_deepstack:
                dense = rest[2 * n_layers]
                kwargs["visual_pos_masks"] = attention_mask  # unused by the dense step
                kwargs["deepstack_visual_embeds"] = [dense[i] for i in range(n_deepstack)]
            out = self.lm(
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                attention_mask=attention_mask,
                cache=cache,
                use_cache=True,
                **kwargs,
            )
            logits = self.head(out.last_hidden_state[:, -1, :])
            flat: list[Any] = []
            for layer in cache.layers:
                flat += [layer.keys, layer.values]
            return (logits, *flat)

    return Decoder().eval()


def _vision_module(model: Any, grid: Any) -> Any:
    import torch

    class Vision(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> tuple[Any, ...]:
            out = self.model.get_image_features(pixel_values, grid, return_dict=True)
            result = [torch.cat(tuple(out.pooler_output), dim=0)]
            deepstack = getattr(out, "deepstack_features", None)
            if deepstack:
                result.append(torch.stack([torch.cat(tuple(f), dim=0) for f in deepstack]))
            return tuple(result)

    return Vision().eval()


def _copy_small_files(src: str, out: Path, builder: Any) -> None:
    """Tokenizer, image processor and config files, as the onnx backend loads them."""
    path = Path(src)
    if path.is_dir():
        for name in _SMALL_FILES:
            if (path / name).is_file():
                shutil.copy2(path / name, out / name)
        return
    # A hub id: what was loaded is saved (the image processor under its base class name, so
    # AutoImageProcessor picks the PIL backend where torchvision is missing).
    builder.tokenizer.save_pretrained(out)
    builder.image_processor.save_pretrained(out)
    pre = out / "preprocessor_config.json"
    data = json.loads(pre.read_text(encoding="utf-8"))
    data["image_processor_type"] = "Qwen2VLImageProcessor"
    pre.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if builder.chat_template:
        (out / "chat_template.jinja").write_text(builder.chat_template, encoding="utf-8")


def export_onnx(
    model_id: str,
    out: str | Path,
    image_size: tuple[int, int],
    *,
    adapter: str | None = None,
    opset: int = 17,
    check: bool = True,
    dtype: str = "float32",
) -> ExportResult:
    """Export a Qwen-VL model folder (or hub id) for the onnx backend.

    Args:
        model_id: Model folder or hub id.
        out: Folder to write (created; files in it are overwritten).
        image_size: ``(width, height)`` of the camera frames the vision graph takes.
        adapter: A PEFT (LoRA) adapter to merge into the weights first.
        opset: ONNX opset.
        check: Run the exported graphs and PyTorch (float32) on one random frame and record
            the largest logit difference (and whether the verdicts agree) in
            ``guard_onnx.json``. A float16 export is checked on CUDA when onnxruntime has it,
            else on the CPU provider when that runs float16 graphs, else not (recorded why).
        dtype: "float32" or "float16" (weights, activations, KV cache and the graphs' float
            inputs and outputs).

    Returns:
        The export folder and its metadata.

    Raises:
        BackendError: The model cannot be loaded or exported.
        MissingExtraError: torch/transformers or onnx/onnxruntime is missing.
    """
    from guard._deps import require

    torch = require("torch", "guard export onnx")
    transformers = require("transformers", "guard export onnx")
    require("onnx", "guard export onnx")
    from guard.backends.hf_loading import load_adapter, load_model, model_config, resolve_local
    from guard.backends.qwen_inputs import QwenInputBuilder
    from guard.backends.transformers_backend import linear_patch_embed

    dtype = parse_dtype(dtype)
    t0 = time.perf_counter()
    out = Path(out)
    path = resolve_local(model_id, "model")
    adapter_path = resolve_local(adapter, "adapter") if adapter else None
    if adapter:
        require("peft", "--adapter")
    config = model_config(path, what="the onnx export")
    if config.model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise BackendError(
            f"model {model_id!r} is a {config.model_type!r} model; the onnx export supports "
            "qwen2_5_vl and qwen3_vl"
        )
    # Eager attention traces to plain matmuls and a float mask; float32 for CPU runtimes.
    model, config = load_model(path, dtype=torch.float32, attn_implementation="eager",
                               what="the onnx export")
    if adapter_path:
        model = load_adapter(model, adapter_path, merge=True)
    model.eval()
    # The float32 model stays the parity reference; the export traces a float16 copy.
    traced = model
    if dtype == "float16":
        import copy

        traced = copy.deepcopy(model).to(torch.float16).eval()
    ftype = torch.float16 if dtype == "float16" else torch.float32
    # The patch embedding as a MatMul: ONNX Runtime's CPU Conv is slower at it (29 -> 21 ms for
    # the small model's vision graph at 640 x 480). Patched after the copy: the new forward
    # holds the module it was made for.
    linear_patch_embed(traced)
    builder = QwenInputBuilder.from_pretrained(
        path, image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        use_processor="never",
    )

    from PIL import Image

    w, h = image_size
    probe = builder.encode_images([Image.new("RGB", (w, h))])
    pixels, grid = probe["pixel_values"], probe["image_grid_thw"]
    text = config.text_config
    n_layers = int(text.num_hidden_layers)
    n_kv = int(text.num_key_value_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    hidden = int(text.hidden_size)
    n_deepstack = len(getattr(config.vision_config, "deepstack_visual_indexes", None) or [])
    merge = int(config.vision_config.spatial_merge_size)
    n_image_tokens = int(grid.prod()) // merge**2

    out.mkdir(parents=True, exist_ok=True)
    vision = _vision_module(traced, grid)
    decoder = _decoder_module(traced)
    lm = traced.model.language_model
    past_names = [f"past_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    present_names = [f"present_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    dec_inputs = ["inputs_embeds", "position_ids", "attention_mask", *past_names]
    dynamic: dict[str, dict[int, str]] = {
        "inputs_embeds": {0: "batch", 1: "tokens"},
        "position_ids": {1: "batch", 2: "tokens"},
        "attention_mask": {0: "batch", 1: "total"},
        "logits": {0: "batch"},
    }
    for name in past_names:
        dynamic[name] = {0: "batch", 2: "past"}
    for name in present_names:
        dynamic[name] = {0: "batch", 2: "total"}
    # Example inputs whose sizes differ from one another, so no dimension is traced as another.
    b, p, t = 2, 3, 5
    example: list[Any] = [
        torch.zeros(b, t, hidden, dtype=ftype),
        torch.arange(p, p + t).view(1, 1, t).expand(3, b, t).contiguous(),
        torch.ones(b, p + t, dtype=torch.long),
    ]
    example += [torch.zeros(b, n_kv, p, head_dim, dtype=ftype) for _ in past_names]
    if n_deepstack:
        dec_inputs.append("deepstack_embeds")
        dynamic["deepstack_embeds"] = {1: "batch", 2: "tokens"}
        example.append(torch.zeros(n_deepstack, b, t, hidden, dtype=ftype))
        lm._deepstack_process = _dense_deepstack
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Tracer and deprecation warnings of the legacy exporter: nothing to act on.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                vision, (pixels.to(ftype),), str(out / VISION_FILE),
                input_names=["pixel_values"],
                output_names=["image_embeds", *(["deepstack"] if n_deepstack else [])],
                opset_version=opset, dynamo=False,
            )
            torch.onnx.export(
                decoder, tuple(example), str(out / DECODER_FILE),
                input_names=dec_inputs, output_names=["logits", *present_names],
                dynamic_axes=dynamic, opset_version=opset, dynamo=False,
            )
    except Exception as exc:
        raise BackendError(f"ONNX export failed: {exc}") from exc
    finally:
        if n_deepstack:
            del lm._deepstack_process

    np.save(out / EMBED_FILE,
            traced.get_input_embeddings().weight.detach().to(ftype).numpy())
    _copy_small_files(path, out, builder)
    gen = model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else builder.tokenizer.eos_token_id
    pad = gen.pad_token_id
    if pad is None:
        pad = builder.tokenizer.pad_token_id
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "source": str(model_id) + (f"+{adapter}" if adapter else ""),
        "model_type": config.model_type,
        "image_size": [w, h],
        "image_grid_thw": [int(x) for x in grid[0].tolist()],
        "pixel_values_shape": list(pixels.shape),
        "n_image_tokens": n_image_tokens,
        "num_layers": n_layers,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_size": hidden,
        "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
        "deepstack_layers": n_deepstack,
        "image_token_id": int(config.image_token_id),
        "video_token_id": int(config.video_token_id),
        "spatial_merge_size": merge,
        "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or []),
        "pad_token_id": int(pad if pad is not None else 0),
        "opset": opset,
        "dtype": dtype,
        "versions": {
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        },
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if check:
        meta["check"] = _parity(model, builder, out, image_size)
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return ExportResult(out=out, meta=meta, seconds=time.perf_counter() - t0)


def _parity(model: Any, builder: Any, out: Path, image_size: tuple[int, int]) -> dict[str, Any]:
    """First-step logits of PyTorch and of the exported graphs on one random frame."""
    import torch
    from PIL import Image

    from guard.backends.base import ChatPrompt
    from guard.backends.engine import VerdictFirstEngine, verdict_first_tokens
    from guard.backends.onnx_backend import OrtRunner
    from guard.backends.transformers_backend import TorchRunner

    rng = np.random.default_rng(0)
    w, h = image_size
    frame = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    prompt = ChatPrompt(
        system=f"You are the safety guard of a robot. Answer {', '.join(VERDICT_WORDS[:-1])} "
        f"or {VERDICT_WORDS[-1]} first.",
        user="Proposed action: turn on the stove",
        images=(frame,),
    )
    words = VERDICT_WORDS
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    logits = []
    if meta["dtype"] == "float32":
        providers: list[Any] = ["CPUExecutionProvider"]
    else:
        import onnxruntime as ort

        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                     if "CUDAExecutionProvider" in ort.get_available_providers()
                     else ["CPUExecutionProvider"])
    try:
        ort_runner = OrtRunner(out, meta, providers=providers)
    except BackendError as exc:
        log.warning("onnx export parity not checked: %s", exc)
        return {"max_abs_logit_diff": None, "verdict_agrees": None, "not_run": str(exc)}
    for runner in (TorchRunner(model, torch.device("cpu"), torch.float32), ort_runner):
        engine = VerdictFirstEngine(
            runner, builder, eos_token_ids=meta["eos_token_ids"],
            pad_token_id=meta["pad_token_id"], spatial_merge_size=meta["spatial_merge_size"],
            verdict_token_ids=lambda ws: verdict_first_tokens(builder.tokenizer, ws),
            prefix_cache=False, frame_cache=0,
        )
        logits.append(engine.prefill(engine.prepare(prompt), {}).logits[0])
        engine.close()
    ids = list((verdict_first_tokens(builder.tokenizer, words) or {}).values())
    agree = bool(ids) and int(np.argmax(logits[0][ids])) == int(np.argmax(logits[1][ids]))
    diff = float(np.abs(logits[0] - logits[1]).max())
    log.info("onnx export parity: max |logit diff| %.3g, verdicts agree: %s", diff, agree)
    return {"max_abs_logit_diff": diff, "verdict_agrees": agree,
            "provider": ort_runner.providers[0]}
