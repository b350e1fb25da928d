"""The transformers backend and its input builder, run for real on tiny random-weight Qwen2.5-VL
and Qwen3-VL models built offline (guard.tiny): loading, preprocessing without torchvision,
generation, verdict probabilities, deadlines, LoRA adapters and bitsandbytes quantization."""

from __future__ import annotations

import itertools
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from guard.backends import create_backend, hf_loading, transformers_backend  # noqa: E402
from guard.backends.base import Backend, ChatPrompt, JudgeRequest  # noqa: E402
from guard.backends.qwen_inputs import (  # noqa: E402
    IGNORE_INDEX,
    QwenInputBuilder,
    build_inputs,
)
from guard.backends.transformers_backend import TransformersBackend  # noqa: E402
from guard.config import GuardConfig  # noqa: E402
from guard.errors import BackendError, BackendTimeout, ConfigError, MissingExtraError  # noqa: E402
from guard.tiny import ARCHS, build_tiny_model  # noqa: E402

# Small images keep the vision tower's share of each test negligible.
IMAGE_OVERRIDES = {"image.max_pixels": 128 * 128, "image.min_pixels": 3136}
MODEL_CLASS = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
LM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in these tests may reach a hub. huggingface_hub reads the variable at import,
    so its constant is patched as well."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {a: build_tiny_model(a, tmp_path_factory.mktemp(a), seed=0) for a in ARCHS}


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def backend(tiny_dirs: dict[str, Path], arch: str) -> TransformersBackend:
    b = create_backend(_config(tiny_dirs[arch]))
    assert isinstance(b, TransformersBackend)
    return b


def _config(model: Path | str, **overrides: Any) -> GuardConfig:
    return GuardConfig().with_overrides(
        **{"model.id": str(model), "model.max_new_tokens": 16, **IMAGE_OVERRIDES, **overrides}
    )


def _image(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _prompt(n_images: int = 1) -> ChatPrompt:
    return ChatPrompt(
        system="You are the safety guard of a robot. Answer ALLOW, ANNOTATE or VETO first.",
        user="Proposed action: put the towel on the stove",
        images=tuple(_image(i) for i in range(n_images)),
    )


def _request(**kw: Any) -> JudgeRequest:
    return JudgeRequest(prompt=kw.pop("prompt", _prompt()), **kw)


def _verdict_logits(b: TransformersBackend, prompt: ChatPrompt) -> torch.Tensor:
    """Next-token logits after the prompt, from a plain forward pass."""
    inputs = b._to_device(b.inputs(prompt))
    with torch.inference_mode():
        return b.model(**inputs).logits[0, -1].float()


# -- the backend on both architectures ---------------------------------------------------------


def test_backend_judges_an_image_and_reports_timings(backend: TransformersBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.name == "transformers"
    assert not backend.inputs.uses_processor  # no torchvision here: the manual route
    out = backend.judge(_request(max_new_tokens=12))
    assert isinstance(out.text, str) and out.text
    assert 1 <= out.n_tokens <= 12
    assert {"preprocess", "generate"} <= out.timings_ms.keys()
    assert all(v >= 0 for v in out.timings_ms.values())
    # Greedy decoding: the same request gives the same answer.
    assert backend.judge(_request(max_new_tokens=12)).text == out.text


def test_verdict_probs_are_the_first_step_probabilities(backend: TransformersBackend) -> None:
    out = backend.judge(_request(max_new_tokens=2))
    assert out.verdict_probs is not None
    assert set(out.verdict_probs) == {"ALLOW", "ANNOTATE", "VETO"}
    assert sum(out.verdict_probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0.0 < p < 1.0 for p in out.verdict_probs.values())

    ids = backend.verdict_token_ids(("ALLOW", "ANNOTATE", "VETO"))
    assert ids is not None
    logits = _verdict_logits(backend, _prompt())
    expected = torch.softmax(logits[list(ids.values())], dim=-1).tolist()
    assert list(out.verdict_probs.values()) == pytest.approx(expected, abs=1e-5)


def test_verdict_words_sharing_a_first_token_give_no_probs(backend: TransformersBackend) -> None:
    out = backend.judge(_request(max_new_tokens=1, verdict_words=("ALLOW", "ALLOWED")))
    assert out.verdict_probs is None


def test_several_images_and_no_image(backend: TransformersBackend) -> None:
    assert backend.judge(_request(prompt=_prompt(2), max_new_tokens=3)).n_tokens >= 1
    assert backend.judge(_request(prompt=_prompt(0), max_new_tokens=3)).n_tokens >= 1


def test_config_caps_new_tokens(tiny_dirs: dict[str, Path]) -> None:
    b = TransformersBackend.from_config(
        _config(tiny_dirs["qwen3_vl"], **{"model.max_new_tokens": 3})
    )
    assert b.judge(_request(max_new_tokens=100)).n_tokens <= 3


def test_model_id_is_the_configured_id(backend: TransformersBackend, tiny_dirs: Any) -> None:
    assert backend.model_id in {str(p) for p in tiny_dirs.values()}


# -- deadlines ---------------------------------------------------------------------------------


def test_deadline_already_passed_does_no_work(backend: TransformersBackend) -> None:
    calls = []
    original = backend.model.generate
    backend.model.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with pytest.raises(BackendTimeout, match="deadline passed"):
            backend.judge(_request(deadline=transformers_backend._clock() - 1.0))
    finally:
        del backend.model.generate
    assert calls == []


def test_deadline_passing_mid_generation_stops_it(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that is early for the two checks before generation and the first three decoding
    # steps, then late: generation must stop right there, far short of max_new_tokens.
    ticks = itertools.count()
    monkeypatch.setattr(transformers_backend, "_clock", lambda: 0.0 if next(ticks) < 5 else 9e9)
    with pytest.raises(BackendTimeout, match="during generation") as info:
        backend.judge(_request(deadline=1.0, max_new_tokens=16))
    n = int(re.search(r"after (\d+) of", str(info.value)).group(1))  # type: ignore[union-attr]
    assert 1 <= n <= 5


def test_deadline_criteria_fires_only_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [10.0]
    monkeypatch.setattr(transformers_backend, "_clock", lambda: now[0])
    crit = transformers_backend._make_deadline_criteria(11.0)
    ids = torch.zeros((2, 5), dtype=torch.long)
    assert crit(ids, None).tolist() == [False, False]
    now[0] = 11.0
    assert crit(ids, None).tolist() == [True, True]
    assert crit.fired
    assert transformers_backend._make_deadline_criteria(None)(ids, None).tolist() == [False] * 2


# -- LoRA adapters -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the Qwen3-VL tiny model's language model, with random (non-zero) B
    matrices so that it changes the logits."""
    peft = pytest.importorskip("peft")
    base = transformers.Qwen3VLForConditionalGeneration.from_pretrained(tiny_dirs["qwen3_vl"])
    torch.manual_seed(0)
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=LM_LINEAR,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        model = peft.get_peft_model(base, cfg)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_lora_adapter_loads_and_changes_the_answer(
    tiny_dirs: dict[str, Path], adapter_dir: Path
) -> None:
    base = TransformersBackend.from_config(_config(tiny_dirs["qwen3_vl"]))
    tuned = TransformersBackend.from_config(
        _config(tiny_dirs["qwen3_vl"], **{"model.adapter": str(adapter_dir)})
    )
    assert tuned.model_id == f"{tiny_dirs['qwen3_vl']}+{adapter_dir}"
    assert base.model_id == str(tiny_dirs["qwen3_vl"])
    # Unquantized: LoRA is folded into the weights, no peft wrapper left at inference.
    assert not any("lora" in n for n, _ in tuned.model.named_modules())
    a, b = _verdict_logits(base, _prompt()), _verdict_logits(tuned, _prompt())
    assert not torch.allclose(a, b, atol=1e-4)
    out_base, out_tuned = base.judge(_request()), tuned.judge(_request())
    assert out_tuned.verdict_probs != out_base.verdict_probs


def test_missing_adapter_is_a_backend_error(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    cfg = _config(tiny_dirs["qwen3_vl"], **{"model.adapter": str(tmp_path / "no-adapter")})
    with pytest.raises(BackendError, match="adapter folder not found"):
        TransformersBackend.from_config(cfg)


# -- quantization ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantization", "layer"), [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")]
)
def test_bitsandbytes_quantized_model_generates(
    tiny_dirs: dict[str, Path], arch: str, quantization: str, layer: str
) -> None:
    pytest.importorskip("bitsandbytes")
    b = TransformersBackend.from_config(
        _config(tiny_dirs[arch], **{"model.quantization": quantization})
    )
    kinds = {name: type(mod).__name__ for name, mod in b.model.named_modules()}
    lm = [k for n, k in kinds.items() if "language_model" in n and n.endswith("q_proj")]
    assert lm and set(lm) == {layer}
    # The vision tower and the LM head stay in full precision.
    assert not any(k == layer for n, k in kinds.items() if ".visual." in n or n == "lm_head")
    out = b.judge(_request(max_new_tokens=8))
    assert 1 <= out.n_tokens <= 8
    assert out.verdict_probs is not None
    assert sum(out.verdict_probs.values()) == pytest.approx(1.0, abs=1e-6)


def test_4bit_with_adapter_keeps_lora_separate(
    tiny_dirs: dict[str, Path], adapter_dir: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    b = TransformersBackend.from_config(
        _config(
            tiny_dirs["qwen3_vl"],
            **{"model.quantization": "4bit", "model.adapter": str(adapter_dir)},
        )
    )
    assert any("lora_A" in n for n, _ in b.model.named_modules())
    out = b.judge(_request(max_new_tokens=4))
    assert out.n_tokens >= 1
    assert out.verdict_probs is not None  # the LM head is found through the peft wrapper


def test_8bit_generation_does_not_flood_the_log(
    tiny_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("bitsandbytes")
    b = TransformersBackend.from_config(
        _config(tiny_dirs["qwen3_vl"], **{"model.quantization": "8bit"})
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        b.judge(_request(max_new_tokens=4))
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]


# -- loading errors ----------------------------------------------------------------------------


def test_missing_model_folder_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="model folder not found") as info:
        create_backend(_config(tmp_path / "nowhere"))
    assert "\n" not in str(info.value)


def test_unknown_hub_id_offline_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="cannot load model 'nobody/no-such-model'") as info:
        create_backend(_config("nobody/no-such-model"))
    assert "\n" not in str(info.value)


def test_not_a_qwen_vl_model_is_a_backend_error(tmp_path: Path) -> None:
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(BackendError, match="'gpt2' model"):
        create_backend(_config(tmp_path))


@pytest.mark.parametrize(
    ("module", "overrides", "extra"),
    [
        ("bitsandbytes", {"model.quantization": "4bit"}, "quant"),
        ("peft", {"model.adapter": "."}, "models"),
    ],
)
def test_missing_optional_package_names_its_extra(
    tiny_dirs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    overrides: dict[str, str],
    extra: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingExtraError, match=re.escape(f"embodied-guard[{extra}]")):
        create_backend(_config(tiny_dirs["qwen3_vl"], **overrides))


def test_model_id_is_required() -> None:
    with pytest.raises(ConfigError, match=r"model\.id"):
        TransformersBackend.from_config(GuardConfig())


def test_closed_backend_refuses_to_judge(tiny_dirs: dict[str, Path]) -> None:
    b = TransformersBackend.from_config(_config(tiny_dirs["qwen2_5_vl"]))
    b.close()
    with pytest.raises(BackendError, match="closed"):
        b.judge(_request())


# -- inputs without torchvision ----------------------------------------------------------------


def _loaded(path: Path) -> tuple[Any, Any, Any]:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    image_processor = transformers.AutoImageProcessor.from_pretrained(path)
    config = transformers.AutoConfig.from_pretrained(path)
    return tok, image_processor, config


def test_image_placeholders_expand_to_merged_patch_count(
    tiny_dirs: dict[str, Path], arch: str
) -> None:
    tok, image_processor, config = _loaded(tiny_dirs[arch])
    prompt = _prompt(2)
    inputs = build_inputs(
        tok,
        image_processor,
        prompt.messages(),
        prompt.images,
        image_token_id=config.image_token_id,
        min_pixels=3136,
        max_pixels=128 * 128,
    )
    grid = inputs["image_grid_thw"]
    assert grid.shape == (2, 3)
    n_image_tokens = int((grid.prod(-1) // image_processor.merge_size**2).sum())
    is_image = inputs["input_ids"] == config.image_token_id
    assert int(is_image.sum()) == n_image_tokens
    assert inputs["mm_token_type_ids"].dtype == torch.int32
    assert torch.equal(inputs["mm_token_type_ids"].bool(), is_image)
    assert inputs["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    assert inputs["attention_mask"].shape == inputs["input_ids"].shape
    assert "labels" not in inputs


def test_max_pixels_bounds_the_image_tokens(tiny_dirs: dict[str, Path]) -> None:
    tok, image_processor, config = _loaded(tiny_dirs["qwen2_5_vl"])
    big = ChatPrompt(system="", user="x", images=(_image(size=(640, 480)),))

    def n_tokens(max_pixels: int) -> int:
        inputs = build_inputs(
            tok, image_processor, big.messages(), big.images, max_pixels=max_pixels
        )
        return int((inputs["input_ids"] == config.image_token_id).sum())

    # One merged token covers 28 x 28 pixels (patch 14, 2 x 2 merge).
    small, large = n_tokens(112 * 112), n_tokens(448 * 448)
    assert 0 < small <= 112 * 112 // (28 * 28) < large <= 448 * 448 // (28 * 28)


def test_completion_gives_labels_on_the_answer_only(tiny_dirs: dict[str, Path], arch: str) -> None:
    tok, image_processor, _ = _loaded(tiny_dirs[arch])
    prompt = _prompt()
    answer = "VETO\nrisk: 0.9\nhazard: fire | towel on the stove | the towel burns | 0.9"
    plain = build_inputs(tok, image_processor, prompt.messages(), prompt.images)
    train = build_inputs(tok, image_processor, prompt.messages(), prompt.images, completion=answer)
    n_prompt = plain["input_ids"].shape[1]
    # The prompt is tokenized exactly as at inference.
    assert torch.equal(train["input_ids"][:, :n_prompt], plain["input_ids"])
    labels = train["labels"][0]
    assert (labels[:n_prompt] == IGNORE_INDEX).all()
    answer_ids = labels[n_prompt:].tolist()
    assert answer_ids == train["input_ids"][0, n_prompt:].tolist()
    assert tok.decode(answer_ids).startswith(answer + "<|im_end|>")
    assert not train["mm_token_type_ids"][0, n_prompt:].any()

    # The tensors train: a finite loss with gradients through the language model.
    model = getattr(transformers, MODEL_CLASS[arch]).from_pretrained(tiny_dirs[arch])
    loss = model(**train).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.lm_head.weight.grad is not None


def test_placeholder_and_image_counts_must_match(tiny_dirs: dict[str, Path]) -> None:
    tok, image_processor, _ = _loaded(tiny_dirs["qwen3_vl"])
    prompt = _prompt(1)
    with pytest.raises(ValueError, match="1 image placeholders for 2 images"):
        build_inputs(tok, image_processor, prompt.messages(), [_image(0), _image(1)])
    with pytest.raises(ValueError, match="no images were given"):
        build_inputs(tok, image_processor, prompt.messages(), [])


class FakeQwenProcessor:
    """Stands in for Qwen2_5_VLProcessor / Qwen3VLProcessor, which cannot be built without
    torchvision: same call signature, and the same text-level placeholder expansion as
    transformers' ProcessorMixin does."""

    def __init__(self, tokenizer: Any, image_processor: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    def apply_chat_template(self, messages: Any, **kw: Any) -> str:
        return self.tokenizer.apply_chat_template(messages, **kw)

    def __call__(
        self,
        text: list[str],
        images: Any = None,
        images_kwargs: dict[str, Any] | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        (prompt,) = text
        if images:
            out.update(self.image_processor(images=images, return_tensors="pt", **images_kwargs))
            parts = prompt.split("<|image_pad|>")
            counts = out["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2
            prompt = parts[0] + "".join(
                "<|image_pad|>" * int(n) + rest for n, rest in zip(counts, parts[1:], strict=True)
            )
        out.update(self.tokenizer([prompt], return_tensors="pt"))
        return out


def test_processor_route_matches_the_manual_route(tiny_dirs: dict[str, Path], arch: str) -> None:
    tok, image_processor, config = _loaded(tiny_dirs[arch])
    kw = {"image_token_id": config.image_token_id, "min_pixels": 3136, "max_pixels": 128 * 128}
    manual = QwenInputBuilder(tok, image_processor, **kw)
    stock = QwenInputBuilder(
        tok, image_processor, processor=FakeQwenProcessor(tok, image_processor), **kw
    )
    assert stock.uses_processor and not manual.uses_processor
    for completion in (None, "ALLOW\nrisk: 0.0"):
        a, b = manual(_prompt(2), completion), stock(_prompt(2), completion)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_auto_falls_back_to_manual_when_the_processor_cannot_load(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend torchvision imports: AutoProcessor then fails on the tiny folder (no video
    # processor), and "auto" must carry on with the tokenizer and image processor.
    monkeypatch.setattr(hf_loading, "torchvision_works", lambda: True)

    def no_processor(*a: Any, **k: Any) -> Any:
        raise OSError("no processor here")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_processor)
    path = str(tiny_dirs["qwen3_vl"])
    builder = QwenInputBuilder.from_pretrained(path, image_token_id=1, use_processor="auto")
    assert not builder.uses_processor
    with pytest.raises(BackendError, match="stock processor"):
        QwenInputBuilder.from_pretrained(path, image_token_id=1, use_processor="always")


def test_always_needs_torchvision(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_loading, "torchvision_works", lambda: False)
    with pytest.raises(BackendError, match="needs torchvision"):
        create_backend(_config(tiny_dirs["qwen3_vl"], **{"model.use_processor": "always"}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("mode", ["off", "sync"])
def test_non_finite_logits_fail_the_check(tiny_dirs: dict[str, Path], bad: float,
                                          mode: str) -> None:
    """NaN or inf at a verdict logit once gave ALLOW with risk 0.0 (argmax picks the NaN)."""
    from guard.core import Guard
    from guard.types import Frame, Status, Verdict

    config = _config(tiny_dirs["qwen2_5_vl"], **{
        "model.rationale": mode, "model.prefix_cache": False, "model.frame_cache": 0,
        "model.warmup": False, "policy.max_frame_age_ms": None,
        "audit.path": str(Path(tiny_dirs["qwen2_5_vl"]).parent / "nan_audit.jsonl")})
    with Guard(config) as g:
        engine = g.backend.engine  # type: ignore[attr-defined]
        real = engine.runner.forward
        allow_id = engine.verdict_token_ids(("ALLOW", "ANNOTATE", "VETO"))["ALLOW"]

        def poisoned(*args: Any, **kwargs: Any) -> Any:
            logits, past = real(*args, **kwargs)
            logits = np.array(logits, copy=True)
            logits[..., allow_id] = bad
            return logits, past

        engine.runner.forward = poisoned
        d = g.check(Frame(image=np.asarray(_image()), stamp=None), {"name": "stove_on"})
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR), d
    assert "logits" in (d.error or ""), d.error  # the engine refuses them itself
