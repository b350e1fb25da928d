"""One Hugging Face loading path (guard/backends/hf_loading.py) for inference, training, the
ONNX export and the benches: the same fallbacks, the same errors, no second copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from guard.backends import hf_loading  # noqa: E402
from guard.errors import BackendError  # noqa: E402
from guard.tiny import build_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def template_in_processor_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny model whose tokenizer has no chat template; the processor's file has one."""
    folder = build_tiny_model("qwen2_5_vl", tmp_path_factory.mktemp("tpl"), seed=0)
    jinja = folder / "chat_template.jinja"
    template = "{#- this folder's own template -#}" + jinja.read_text(encoding="utf-8")
    jinja.unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return folder, template


def test_training_and_inference_take_the_same_chat_template_fallback(
    template_in_processor_file: tuple[Path, str],
) -> None:
    from guard.backends.qwen_inputs import QwenInputBuilder
    from training.processor import load_processor

    folder, template = template_in_processor_file
    judge = QwenInputBuilder.from_pretrained(str(folder), image_token_id=1, use_processor="never")
    trainer = load_processor(folder, use_processor="never")
    assert judge.chat_template == template
    assert trainer.chat_template == template
    assert trainer.tokenizer.padding_side == "left"


def test_always_without_torchvision_is_the_same_error_in_training(
    template_in_processor_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.processor import load_processor

    monkeypatch.setattr(hf_loading, "torchvision_works", lambda: False)
    with pytest.raises(BackendError, match="'always' needs torchvision"):
        load_processor(template_in_processor_file[0], use_processor="always")


def test_a_model_that_is_not_qwen_vl_is_refused_alike(tmp_path: Path) -> None:
    from guard.backends.transformers_backend import TransformersBackend
    from training.config import ModelSpec
    from training.models import load_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for load, who in [(lambda: TransformersBackend(str(tmp_path)), "the transformers backend"),
                      (lambda: load_model(ModelSpec(id=str(tmp_path))), "training")]:
        with pytest.raises(BackendError, match=f"is a 'bert' model; {who} runs qwen2_vl"):
            load()


def test_auto_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hf_loading.resolve_dtype("auto", "cpu") is torch.float32
    assert hf_loading.resolve_dtype("float16", "cpu") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hf_loading.resolve_dtype("auto", "cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    # half precision to run; float32 to train (float16 weights do not train stably)
    assert hf_loading.resolve_dtype("auto", "cuda") is torch.float16
    assert hf_loading.resolve_dtype("auto", "cuda", training=True) is torch.float32


def test_quantization_leaves_the_vision_tower_and_lm_head_alone() -> None:
    pytest.importorskip("bitsandbytes")
    assert hf_loading.quantization_config("none", torch.float32) is None
    q4 = hf_loading.quantization_config("4bit", torch.bfloat16)
    assert (q4.load_in_4bit, q4.bnb_4bit_quant_type, q4.bnb_4bit_use_double_quant) == (
        True, "nf4", True)
    assert q4.bnb_4bit_compute_dtype is torch.bfloat16
    q8 = hf_loading.quantization_config("8bit", torch.float32)
    for q in (q4, q8):
        assert q.llm_int8_skip_modules == ["model.visual", "visual", "lm_head"]


def test_no_second_copy_of_the_loading_code() -> None:
    """Quantization configs, adapters, the stock processor and the model class are loaded in
    hf_loading only."""
    pattern = re.compile(r"BitsAndBytesConfig\(|PeftModel\.from_pretrained|"
                         r"AutoProcessor\.from_pretrained|"
                         r"MODEL_CLASSES\[[^\]]*\]\)\.from_pretrained|cls\.from_pretrained")
    found = []
    for path in [*ROOT.glob("guard/**/*.py"), *ROOT.glob("training/**/*.py")]:
        if path.name == "hf_loading.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
