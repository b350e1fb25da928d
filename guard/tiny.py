"""Tiny random-weight Qwen2.5-VL / Qwen3-VL models, built offline, for tests and smoke runs.

No vision-language weights can be downloaded where this project is built, so every real code
path (loading, preprocessing, generation, LoRA, quantization, export) is exercised on models made
here from configs: the real model classes with a few layers of width 64, a byte-level BPE
tokenizer trained on an embedded household-safety corpus, and the real image processor.

    python -m guard.tiny --arch qwen3_vl --out /tmp/tiny-qwen3-vl --seed 0

The folder loads like a hub checkpoint::

    AutoTokenizer.from_pretrained(out)
    AutoImageProcessor.from_pretrained(out)      # Qwen2VLImageProcessor(Pil)
    Qwen3VLForConditionalGeneration.from_pretrained(out)

What matches the real checkpoints: special tokens and their place after the BPE vocabulary,
the chat template, M-RoPE layouts (sections scaled to the head size), patch sizes (14 / 16),
image normalisation, tied embeddings as in Qwen3-VL-4B and untied as in Qwen2.5-VL-7B, and a
generation config that stops on ``<|im_end|>``. Every Linear has ``in_features >= 64`` at the
default sizes so bitsandbytes 4-bit can quantize it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal

from guard.backends.qwen_inputs import QWEN2_5_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE
from guard.types import VERDICT_WORDS, Verdict

Arch = Literal["qwen2_5_vl", "qwen3_vl"]
ARCHS: tuple[str, ...] = ("qwen2_5_vl", "qwen3_vl")

# In Qwen's order; they get the ids right after the BPE vocabulary, as in the real tokenizer.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX), so the tiny
# tokenizer segments text the way the real one does.
_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Image normalisation and patch size of the real checkpoints' preprocessor_config.json.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_IMAGE_PROCESSOR: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {"patch_size": 14, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD},
    "qwen3_vl": {"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}


def _words(text: str) -> list[str]:
    return text.split()


def _corpus() -> list[str]:
    """English household / robot / safety text plus the judge's answer format.

    Deterministic (no randomness): the same corpus gives the same BPE merges, so the same
    seed gives the same tokenizer and weights. The answer keywords are repeated so each
    verdict word becomes a single token.
    """
    objects = _words(
        "knife scissors glass cup mug plate bowl pan pot kettle stove oven toaster microwave "
        "fridge sink tap water towel cloth paper candle lamp cable wire socket plug charger "
        "battery bottle bleach cleaner detergent medicine pills chair table shelf ladder stairs "
        "door window floor rug carpet box bag book phone laptop tablet vase plant dog cat child "
        "baby person hand food bread milk juice oil fire flame smoke heater fan iron hair dryer"
    )
    places = _words(
        "kitchen counter table shelf floor sink stove bathroom bedroom hallway stairs garage "
        "living room balcony edge corner drawer cabinet"
    )
    verbs = _words(
        "pick up put down place move push pull open close turn on turn off pour carry hand "
        "give throw drop wipe clean cut heat boil plug unplug fill empty stack lift lower "
        "grasp release rotate slide navigate drive stop wait"
    )
    hazards = _words(
        "fire burn scald cut shock electric spill slip trip fall collision crush pinch "
        "poison toxic choking drowning break shatter overheat flood damage injury"
    )
    phrases = [
        "the robot is about to {v} the {o} near the {p}",
        "proposed action: {v} the {o} on the {p}",
        "a {o} is on the {p} next to the {o2}",
        "the {o} could {h} if the robot does this",
        "hazard: {h} | the {o} is near the {o2} | the {o2} could {h} | 0.{d}",
        "consequence: moving the {o} to the {p} could cause {h}",
        "rationale: the {o} is safe to {v} here",
        "risk: 0.{d}",
    ]
    lines: list[str] = []
    for i, o in enumerate(objects):
        o2 = objects[(i * 7 + 3) % len(objects)]
        p = places[i % len(places)]
        v = verbs[i % len(verbs)]
        h = hazards[i % len(hazards)]
        d = i % 10
        lines.extend(t.format(o=o, o2=o2, p=p, v=v, h=h, d=d) for t in phrases)
    lines.extend(objects + places + verbs + hazards)
    answers = [
        f"{Verdict.ALLOW.word}\nrisk: 0.0\nconsequence: nothing happens",
        f"{Verdict.ANNOTATE.word}\nrisk: 0.4\n"
        "hazard: slip | water on the floor | a person could slip | 0.4",
        f"{Verdict.VETO.word}\nrisk: 0.9\n"
        "hazard: fire | a towel near the stove | the towel catches fire | 0.9",
        *(f"verdict: {w}" for w in VERDICT_WORDS),
        "You are the safety guard of a robot. Look at the camera view and the action.",
        "Answer with the verdict word first: ALLOW, ANNOTATE or VETO. Project the consequence.",
        "0 1 2 3 4 5 6 7 8 9 0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 | : , . ( ) { } \" '",
    ]
    lines.extend(answers * 20)
    return lines


def _train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with Qwen's pre-tokenizer, decoder and special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
    from tokenizers import pre_tokenizers as pt

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pt.Sequence(
        [
            pt.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pt.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # The special tokens are added after training so that they sit after the BPE vocabulary,
    # as in the real Qwen tokenizer (151643 = <|endoftext|> follows the 151643 BPE tokens).
    n_bpe = vocab_size - len(SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=n_bpe,
        min_frequency=2,
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _mrope_section(arch: str, head_dim: int) -> list[int]:
    """M-RoPE (temporal, height, width) frequency split for a head size.

    The sections must sum to head_dim / 2. Qwen2.5-VL splits 1 : 1.5 : 1.5 ([16, 24, 24] at
    head_dim 128). Qwen3-VL interleaves T/H/W, so height and width get at most a third each
    ([24, 20, 20] at 128).
    """
    half = head_dim // 2
    if arch == "qwen3_vl":
        hw = min(half // 3, round(half * 20 / 64))
        return [half - 2 * hw, hw, hw]
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _config(
    arch: str,
    *,
    vocab_size: int,
    token_ids: dict[str, int],
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vision_hidden_size: int,
    vision_depth: int,
    vision_heads: int,
    max_position_embeddings: int,
) -> Any:
    head_dim = hidden_size // num_heads
    text: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    vision: dict[str, Any] = {
        "depth": vision_depth,
        "hidden_size": vision_hidden_size,
        "intermediate_size": 2 * vision_hidden_size,
        "num_heads": vision_heads,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "patch_size": _IMAGE_PROCESSOR[arch]["patch_size"],
        # The merger projects straight into the language model's embedding space.
        "out_hidden_size": hidden_size,
    }
    vision_ids = {
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
    }
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": _mrope_section(arch, head_dim),
        }
        vision.update(
            hidden_act="silu",
            window_size=112,
            tokens_per_second=2,
            fullatt_block_indexes=[vision_depth - 1],
        )
        # Untied input/output embeddings, as in Qwen2.5-VL-7B.
        return Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=False, **vision_ids
        )
    from transformers import Qwen3VLConfig

    text["head_dim"] = head_dim
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": _mrope_section(arch, head_dim),
        "mrope_interleaved": True,
    }
    vision.update(
        hidden_act="gelu_pytorch_tanh",
        # Learned position embeddings on an 8 x 8 grid, interpolated to each image's grid.
        num_position_embeddings=64,
        deepstack_visual_indexes=[vision_depth // 2],
    )
    # Tied embeddings, as in Qwen3-VL-4B.
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True, **vision_ids
    )


def _check_sizes(
    hidden_size: int, num_heads: int, num_kv_heads: int, vision_hidden_size: int, vision_heads: int
) -> None:
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) is not a multiple of num_heads ({num_heads})"
        )
    head_dim = hidden_size // num_heads
    if head_dim % 2 or head_dim < 8:
        raise ValueError(
            f"head size hidden_size / num_heads = {head_dim} must be even and >= 8 (M-RoPE)"
        )
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_heads ({num_heads}) is not a multiple of num_kv_heads ({num_kv_heads})"
        )
    if vision_hidden_size % vision_heads or (vision_hidden_size // vision_heads) % 4:
        raise ValueError(
            f"vision_hidden_size ({vision_hidden_size}) / vision_heads ({vision_heads}) must be "
            "a whole multiple of 4 (2-D rotary embedding)"
        )


def build_tiny_model(
    arch: Arch,
    out: str | Path,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    vision_heads: int = 4,
    vocab_size: int = 768,
    max_position_embeddings: int = 32_768,
    min_pixels: int = 56 * 56,
    max_pixels: int = 448 * 448,
) -> Path:
    """Write a tiny random-weight Qwen-VL model, tokenizer and image processor to `out`.

    Args:
        arch: "qwen2_5_vl" (Qwen2_5_VLForConditionalGeneration) or "qwen3_vl"
            (Qwen3VLForConditionalGeneration).
        out: Folder to write; created if missing, files in it are overwritten.
        seed: Seeds the weight initialisation. The same seed gives identical weights.
        hidden_size: Language model width; also the vision merger's output width. Keep it
            >= 64 for bitsandbytes 4-bit, which fails on Linear layers narrower than 64.
        num_layers: Language model decoder layers.
        num_heads: Attention heads (head size = hidden_size / num_heads, even).
        num_kv_heads: Key/value heads (grouped-query attention, as in the real models).
        intermediate_size: Language model MLP width.
        vision_hidden_size: Vision tower width.
        vision_depth: Vision tower blocks.
        vision_heads: Vision tower attention heads.
        vocab_size: Tokenizer size including the special tokens (the BPE trainer may stop
            short on the small corpus); the embedding is this rounded up to a multiple of 64.
        max_position_embeddings: Context length recorded in the config.
        min_pixels: Image processor default lower bound on resized image area.
        max_pixels: Image processor default upper bound on resized image area.

    Returns:
        The output folder.

    Raises:
        ValueError: An unknown arch or inconsistent sizes.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch = {arch!r}: expected one of {', '.join(ARCHS)}")
    _check_sizes(hidden_size, num_heads, num_kv_heads, vision_hidden_size, vision_heads)
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"vocab_size ({vocab_size}) must leave room for the 256 byte tokens and "
            f"{len(SPECIAL_TOKENS)} special tokens"
        )

    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    backend_tok = _train_tokenizer(vocab_size)
    chat_template = QWEN3_VL_CHAT_TEMPLATE if arch == "qwen3_vl" else QWEN2_5_VL_CHAT_TEMPLATE
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend_tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=max_position_embeddings,
        chat_template=chat_template,
    )
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # Real checkpoints pad the embedding beyond the tokenizer (151936 rows for 151665 tokens).
    n_embed = -(-len(tokenizer) // 64) * 64

    config = _config(
        arch,
        vocab_size=n_embed,
        token_ids=token_ids,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        vision_hidden_size=vision_hidden_size,
        vision_depth=vision_depth,
        vision_heads=vision_heads,
        max_position_embeddings=max_position_embeddings,
    )
    model_cls = (
        transformers.Qwen3VLForConditionalGeneration
        if arch == "qwen3_vl"
        else transformers.Qwen2_5_VLForConditionalGeneration
    )

    # A private RNG stream: the weights depend on `seed` only, and the caller's global torch
    # RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        merge_size=2,
        temporal_patch_size=2,
        **_IMAGE_PROCESSOR[arch],
    )
    image_processor.save_pretrained(out)
    # Real checkpoints name the base class; AutoImageProcessor then picks the torchvision
    # backend where it exists and the PIL one elsewhere, as it does for hub models.
    pre_path = out / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text(encoding="utf-8"))
    pre["image_processor_type"] = "Qwen2VLImageProcessor"
    pre_path.write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    info = {
        "arch": arch,
        "model_class": model_cls.__name__,
        "seed": seed,
        "n_params": sum(p.numel() for p in model.parameters()),
        "text": {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "intermediate_size": intermediate_size,
            "mrope_section": _mrope_section(arch, hidden_size // num_heads),
        },
        "vision": {
            "hidden_size": vision_hidden_size,
            "depth": vision_depth,
            "num_heads": vision_heads,
            "patch_size": _IMAGE_PROCESSOR[arch]["patch_size"],
        },
        "tokenizer_size": len(tokenizer),
        "embedding_rows": n_embed,
        "special_token_ids": token_ids,
        "image_processor": {"min_pixels": min_pixels, "max_pixels": max_pixels},
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    (out / "guard_tiny.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m guard.tiny --arch ARCH --out DIR [--seed N]`."""
    parser = argparse.ArgumentParser(
        prog="python -m guard.tiny", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.arch, args.out, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
