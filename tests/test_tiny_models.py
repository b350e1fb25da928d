"""The tiny random-weight Qwen-VL models: what is written, that it loads back through the stock
transformers classes, and that it is deterministic and small enough for CPU tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from guard.tiny import ARCHS, SPECIAL_TOKENS, build_tiny_model  # noqa: E402

MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
PATCH_SIZE = {"qwen2_5_vl": 14, "qwen3_vl": 16}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in these tests may reach a hub. huggingface_hub reads the variable at import,
    so its constant is patched as well."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(request.param, tmp_path_factory.mktemp(request.param), seed=0)


def _arch(path: Path) -> str:
    return json.loads((path / "guard_tiny.json").read_text())["arch"]


def _image() -> object:
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_folder_has_what_from_pretrained_needs(tiny: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "guard_tiny.json",
    ):
        assert (tiny / name).is_file(), name
    info = json.loads((tiny / "guard_tiny.json").read_text())
    assert info["arch"] in ARCHS
    assert info["model_class"] == MODEL_CLASSES[info["arch"]]
    assert info["seed"] == 0
    assert 0 < info["n_params"] < 2_000_000


def test_loads_back_with_consistent_token_ids(tiny: Path) -> None:
    arch = _arch(tiny)
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    image_processor = transformers.AutoImageProcessor.from_pretrained(tiny)
    model = getattr(transformers, MODEL_CLASSES[arch]).from_pretrained(tiny)
    cfg = model.config

    assert cfg.model_type == arch
    assert image_processor.patch_size == PATCH_SIZE[arch]
    assert image_processor.merge_size == cfg.vision_config.spatial_merge_size
    assert cfg.text_config.vocab_size >= len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    # Special tokens are single tokens placed after the BPE vocabulary, as in Qwen's.
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    gen = model.generation_config
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
    assert gen.pad_token_id == tok.pad_token_id
    assert gen.do_sample is False


def test_tokenizer_has_verdict_words_and_chat_template(tiny: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    firsts = []
    for word in ("ALLOW", "ANNOTATE", "VETO"):
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (word, tok.convert_ids_to_tokens(ids))
        firsts.append(ids[0])
    assert len(set(firsts)) == 3
    text = "ANNOTATE\nrisk: 0.4\nhazard: slip | wet floor | a person falls | 0.5"
    assert tok.decode(tok(text)["input_ids"]) == text

    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Guard."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Act."}]},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nGuard.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Act.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generates_32_tokens_from_an_image_and_stays_tiny(tiny: Path) -> None:
    from guard.backends.qwen_inputs import build_inputs

    arch = _arch(tiny)
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    image_processor = transformers.AutoImageProcessor.from_pretrained(tiny)
    model = getattr(transformers, MODEL_CLASSES[arch]).from_pretrained(tiny).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    inputs = build_inputs(tok, image_processor, messages, [_image()])
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert out.shape[1] - inputs["input_ids"].shape[1] == 32
    # Size, not seconds: a default that grew would slow every test that builds one (speed is
    # measured by `python -m guard.bench.overhead`, not asserted).
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_every_quantizable_linear_is_wide_enough_for_4bit(tiny: Path) -> None:
    arch = _arch(tiny)
    model = getattr(transformers, MODEL_CLASSES[arch]).from_pretrained(tiny)
    narrow = [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and mod.in_features < 64
    ]
    assert narrow == []


def _weights(path: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_weights_other_seed_other_weights(arch: str, tmp_path: Path) -> None:
    a = _weights(build_tiny_model(arch, tmp_path / "a", seed=3))
    b = _weights(build_tiny_model(arch, tmp_path / "b", seed=3))
    c = _weights(build_tiny_model(arch, tmp_path / "c", seed=4))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_building_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model("qwen3_vl", tmp_path, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_bad_arguments_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch = 'llama'"):
        build_tiny_model("llama", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a multiple of num_heads"):
        build_tiny_model("qwen3_vl", tmp_path, hidden_size=66, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model("qwen3_vl", tmp_path, vocab_size=100)


def test_module_entry_point_writes_a_model(tmp_path: Path) -> None:
    from guard.tiny import main

    assert main(["--arch", "qwen2_5_vl", "--out", str(tmp_path / "m"), "--seed", "1"]) == 0
    assert json.loads((tmp_path / "m" / "guard_tiny.json").read_text())["seed"] == 1
