"""The fast paths, run for real on tiny Qwen2.5-VL and Qwen3-VL models: M-RoPE ids computed in
Python, the prompt-prefix and frame caches (same logits as a plain forward), verdict first (same
verdict as the whole answer; async rationales audited), batches (same answers as one by one),
the ONNX export and backend (same answers as PyTorch), and quantized models on these paths."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from guard.backends.base import ChatPrompt, JudgeRequest  # noqa: E402
from guard.backends.mrope import mrope_positions  # noqa: E402
from guard.backends.transformers_backend import TransformersBackend  # noqa: E402
from guard.bench.verdict_rig import rig_folder  # noqa: E402
from guard.config import GuardConfig  # noqa: E402
from guard.core import Guard  # noqa: E402
from guard.errors import ConfigError  # noqa: E402
from guard.prompting import parse_answer  # noqa: E402
from guard.tiny import ARCHS, build_tiny_model  # noqa: E402
from guard.types import ActionProposal, Decision, Frame  # noqa: E402

SYSTEM = "You are the safety guard of a robot. Answer ALLOW, ANNOTATE or VETO first."
ACTIONS = ["put the towel on the stove", "turn on the tap", "hand me the big kitchen knife now"]
IMAGE = {"min_pixels": 3136, "max_pixels": 128 * 128}
WORDS = ("ALLOW", "ANNOTATE", "VETO")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {a: build_tiny_model(a, tmp_path_factory.mktemp(a), seed=0) for a in ARCHS}


@pytest.fixture(scope="module")
def rigged_dirs(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Path]:
    """The tiny models edited to answer a verdict word first (guard.bench.verdict_rig)."""
    return {a: rig_folder(d, tmp_path_factory.mktemp(f"rig-{a}")) for a, d in tiny_dirs.items()}


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def backend(tiny_dirs: dict[str, Path], arch: str) -> TransformersBackend:
    return TransformersBackend(str(tiny_dirs[arch]), max_new_tokens=12, **IMAGE)


@pytest.fixture(scope="module")
def rigged(rigged_dirs: dict[str, Path], arch: str) -> TransformersBackend:
    return TransformersBackend(str(rigged_dirs[arch]), max_new_tokens=12, **IMAGE)


def _image(seed: int, size: tuple[int, int] = (64, 48)) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _prompt(action: str, *images: Any) -> ChatPrompt:
    return ChatPrompt(system=SYSTEM, user=f"Proposed action: {action}", images=tuple(images))


def _plain_logits(b: TransformersBackend, prompt: ChatPrompt) -> np.ndarray:
    """Next-token logits of a plain forward over the whole prompt (the model's own positions)."""
    inputs = b._to_device(b.inputs(prompt))
    with torch.inference_mode():
        logits: np.ndarray = b.model(**inputs).logits[0, -1].float().numpy()
    return logits


def _engine_logits(b: TransformersBackend, prompt: ChatPrompt) -> np.ndarray:
    e = b.engine
    with e.lock.critical():
        logits: np.ndarray = e.prefill(e.prepare(prompt), {}).logits[0]
    return logits


# -- M-RoPE --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_mrope_positions_equal_get_rope_index(backend: TransformersBackend, n_images: int) -> None:
    prompt = _prompt(ACTIONS[0], *[_image(i, (64 + 28 * i, 48)) for i in range(n_images)])
    inputs = backend.inputs(prompt)
    types = inputs["mm_token_type_ids"][0].numpy()
    grids = inputs.get("image_grid_thw", torch.zeros((0, 3), dtype=torch.long)).numpy()
    ours, next_pos = mrope_positions(types, grids, 2)
    if n_images:
        theirs, delta = backend.model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
        )
        assert np.array_equal(ours, theirs[:, 0].numpy())
        assert next_pos == len(types) + int(delta[0, 0])
    else:
        assert np.array_equal(ours, np.tile(np.arange(len(types)), (3, 1)))
    # A prefix's positions do not depend on what follows it (the cache relies on this); the
    # prompt ends in text ("<|im_end|>\n<|im_start|>assistant\n").
    head, _ = mrope_positions(types[:-3], grids, 2)
    assert np.array_equal(head, ours[:, :-3])


def test_mrope_rejects_mismatched_grids() -> None:
    with pytest.raises(ValueError, match="does not match its grid"):
        mrope_positions([0, 1, 1, 1, 0], [[1, 4, 4]], 2)
    with pytest.raises(ValueError, match="more image grids"):
        mrope_positions([0, 0], [[1, 4, 4]], 2)


# -- caches: same logits with and without ---------------------------------------------------------


def test_prefix_and_frame_caches_give_the_plain_forward_logits(
    tiny_dirs: dict[str, Path], arch: str
) -> None:
    b = TransformersBackend(str(tiny_dirs[arch]), max_new_tokens=4, **IMAGE)
    e = b.engine
    frame_a, frame_b = _image(1), _image(2)
    cases = [
        ("cold", _prompt(ACTIONS[0], frame_a)),  # nothing cached yet
        ("system", _prompt(ACTIONS[1], frame_b)),  # new frame: the system prefix is reused
        # Same frame: the last prompt on it, through the image and the fixed text after it.
        ("prompt", _prompt(ACTIONS[2], frame_b)),
        ("prompt", _prompt(ACTIONS[0], frame_a)),
        # Same frame, other text right after the image: the prefix through the image only.
        ("frame", ChatPrompt(system=SYSTEM, user="Other words", images=(frame_b,))),
        # Two frames, the first one new: KV from the system prefix, the known frame's vision
        # features from the image cache.
        ("system", _prompt(ACTIONS[1], _image(3), frame_b)),
    ]
    for expect, prompt in cases:
        before = dict(e.stats)
        ours = _engine_logits(b, prompt)
        plain = _plain_logits(b, prompt)
        np.testing.assert_allclose(ours, plain, atol=1e-4, rtol=0)
        assert int(np.argmax(ours)) == int(np.argmax(plain))
        hits = {k: e.stats[k] - before[k] for k in ("system_hits", "frame_hits", "prompt_hits")}
        if expect == "cold":
            assert hits == {"system_hits": 0, "frame_hits": 0, "prompt_hits": 0}
        else:
            assert hits[f"{expect}_hits"] == 1, (expect, hits)
        if expect == "frame":
            assert hits["prompt_hits"] == 0, hits
        if expect == "prompt":  # reused beyond the image: fewer tokens left to prefill
            assert hits["frame_hits"] == 1
            n_frame = dict(e.prepare(prompt).prefixes)
            frame_end = max(n for k, n in n_frame.items() if k.startswith("frame:"))
            assert e.stats["cached_tokens"] - before["cached_tokens"] > frame_end
    assert e.stats["image_hits"] >= 2 and e.stats["cached_tokens"] > 0


def test_caches_do_not_change_answers(tiny_dirs: dict[str, Path], arch: str) -> None:
    cached = TransformersBackend(str(tiny_dirs[arch]), max_new_tokens=10, **IMAGE)
    plain = TransformersBackend(str(tiny_dirs[arch]), max_new_tokens=10, prefix_cache=False,
                                frame_cache=0, **IMAGE)
    frame = _image(5)
    for action in ACTIONS:
        req = JudgeRequest(prompt=_prompt(action, frame), max_new_tokens=10)
        a, c = cached.judge(req), plain.judge(req)
        assert a.text == c.text and a.n_tokens == c.n_tokens
        assert a.verdict_probs == pytest.approx(c.verdict_probs, abs=1e-5)
    assert cached.engine.stats["frame_hits"] == 2 and plain.engine.stats["cached_tokens"] == 0


def test_engine_answer_equals_transformers_generate(backend: TransformersBackend) -> None:
    prompt = _prompt(ACTIONS[0], _image(7))
    inputs = backend._to_device(backend.inputs(prompt))
    with torch.inference_mode():
        cfg = backend._generation_config_for(12)
        seq = backend.model.generate(**inputs, generation_config=cfg)
    expected = backend.tokenizer.decode(seq[0, inputs["input_ids"].shape[1]:],
                                        skip_special_tokens=True)
    assert backend.judge(JudgeRequest(prompt=prompt, max_new_tokens=12)).text == expected


# -- verdict first ------------------------------------------------------------------------------


def test_rigged_model_answers_a_verdict_word_first(rigged: TransformersBackend) -> None:
    out = rigged.judge(JudgeRequest(prompt=_prompt(ACTIONS[0], _image(0))))
    assert out.text in WORDS and out.n_tokens == 2  # the verdict, then <|im_end|>


def test_verdict_first_equals_the_full_answer(rigged: TransformersBackend) -> None:
    for i, action in enumerate(ACTIONS):
        prompt = _prompt(action, _image(10 + i))
        sync = rigged.judge(JudgeRequest(prompt=prompt, rationale="sync"))
        off = rigged.judge(JudgeRequest(prompt=prompt, rationale="off"))
        asy = rigged.judge(JudgeRequest(prompt=prompt, rationale="async"))
        full_verdict = parse_answer(sync.text).verdict
        assert parse_answer(off.text).verdict is full_verdict
        assert parse_answer(asy.text).verdict is full_verdict
        assert off.verdict_probs == pytest.approx(sync.verdict_probs, abs=1e-6)
        assert off.rationale is None and off.n_tokens == 1
        assert asy.rationale is not None and asy.rationale.result(timeout=30) == sync.text
        # The verdict is the argmax over the verdict words' probabilities.
        assert sync.verdict_probs is not None
        assert max(sync.verdict_probs, key=sync.verdict_probs.__getitem__) == off.text
        assert "decode" not in off.timings_ms and off.timings_ms["verdict"] > 0


def test_an_off_format_model_is_answered_in_full(backend: TransformersBackend) -> None:
    """The random model's first token is no verdict word: off and async fall back to the whole
    answer, so the strict parser (not a constrained verdict) decides, as in sync mode."""
    prompt = _prompt(ACTIONS[0], _image(20))
    sync = backend.judge(JudgeRequest(prompt=prompt, rationale="sync"))
    before = backend.engine.stats["off_format"]
    for mode in ("off", "async"):
        out = backend.judge(JudgeRequest(prompt=prompt, rationale=mode))  # type: ignore[arg-type]
        assert (out.text, out.rationale) == (sync.text, None)
    assert backend.engine.stats["off_format"] == before + 2


def test_a_waiting_check_goes_before_a_background_rationale(
    rigged: TransformersBackend,
) -> None:
    e = rigged.engine
    long = JudgeRequest(prompt=_prompt(ACTIONS[0], _image(30)), rationale="async",
                        max_new_tokens=400)
    first = e.judge(long, 400, min_new_tokens=400)  # a 400-token rationale in the background
    assert first.rationale is not None
    t0 = time.perf_counter()
    second = rigged.judge(JudgeRequest(prompt=_prompt(ACTIONS[1], _image(31)), rationale="off"))
    waited = time.perf_counter() - t0
    assert second.text in WORDS
    assert not first.rationale.done(), f"the check waited {waited:.3f} s for the rationale"
    text = first.rationale.result(timeout=60)
    assert text.startswith(first.text)


def test_guard_audits_async_rationales_and_calls_back(
    rigged_dirs: dict[str, Path], tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    config = GuardConfig().with_overrides(**{
        "model.id": str(rigged_dirs["qwen3_vl"]), "model.rationale": "async",
        "model.max_new_tokens": 8, "audit.path": str(audit), "policy.max_frame_age_ms": None,
        "image.max_pixels": 128 * 128,
    })
    done = threading.Event()
    completed: list[Decision] = []

    def on_rationale(d: Decision) -> None:
        completed.append(d)
        done.set()

    frame = Frame(image=np.asarray(_image(40)), stamp=time.time())
    with Guard(config) as guard:
        guard.on_rationale(on_rationale)
        decision = guard.check(frame, ActionProposal(name="stove_on", description=ACTIONS[0]))
        assert done.wait(30)
    sync_config = config.with_overrides(**{"model.rationale": "sync",
                                           "audit.path": str(tmp_path / "sync.jsonl")})
    with Guard(sync_config) as guard:
        sync = guard.check(frame, ActionProposal(name="stove_on", description=ACTIONS[0]))
    assert decision.status.value == "ok" and decision.verdict is sync.verdict
    assert decision.risk == pytest.approx(sync.risk, abs=1e-6)
    (cb,) = completed
    assert cb.id == decision.id and cb.verdict is decision.verdict
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["decision", "rationale"]
    assert records[1]["decision_id"] == decision.id
    assert records[1]["agrees"] is True and records[1]["answer_verdict"] == sync.verdict.value


def test_closing_with_a_pending_rationale_still_audits_it(
    rigged_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from guard.audit import verify

    audit = tmp_path / "audit.jsonl"
    config = GuardConfig().with_overrides(**{
        "model.id": str(rigged_dirs["qwen2_5_vl"]), "model.rationale": "async",
        "audit.path": str(audit), "policy.max_frame_age_ms": None,
        "image.max_pixels": 128 * 128,
    })
    guard = Guard(config)
    engine = guard.backend.engine  # type: ignore[attr-defined]
    finish = engine._finish_rationale

    def after_close(*args: Any) -> str:  # the rationale starts only once close() began
        while not engine._closed:
            time.sleep(0.005)
        text: str = finish(*args)
        return text

    engine._finish_rationale = after_close
    decision = guard.check(Frame(image=np.asarray(_image(41)), stamp=time.time()),
                           ActionProposal(name="x", description=ACTIONS[1]))
    guard.close()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["decision", "rationale"]
    assert records[1]["decision_id"] == decision.id
    assert "closed before the rationale finished" in records[1]["error"]
    assert verify(audit).ok


def test_rationale_mode_is_validated() -> None:
    assert GuardConfig().model.rationale == "sync"
    with pytest.raises(ConfigError, match=r"model\.rationale = 'later'"):
        GuardConfig().with_overrides(**{"model.rationale": "later"})


# -- batches ------------------------------------------------------------------------------------


def test_a_batch_answers_as_one_by_one(backend: TransformersBackend) -> None:
    shared, other = _image(50), _image(51, (92, 48))
    requests = [
        JudgeRequest(prompt=_prompt(ACTIONS[0], shared), max_new_tokens=10),
        JudgeRequest(prompt=_prompt(ACTIONS[2], shared), max_new_tokens=6),
        JudgeRequest(prompt=_prompt(ACTIONS[1], other), max_new_tokens=10),  # another size
        JudgeRequest(prompt=_prompt(ACTIONS[1]), max_new_tokens=10),  # no image
    ]
    batch = backend.judge_batch(requests)
    one = [backend.judge(r) for r in requests]
    for b, o in zip(batch, one, strict=True):
        assert (b.text, b.n_tokens) == (o.text, o.n_tokens)
        assert b.verdict_probs == pytest.approx(o.verdict_probs, abs=1e-5)
    # Proposals on one frame share its cached prefix, expanded over the batch.
    before = backend.engine.stats["frame_hits"]
    same = [JudgeRequest(prompt=_prompt(a, shared), max_new_tokens=10) for a in ACTIONS]
    assert [o.text for o in backend.judge_batch(same)] == [backend.judge(r).text for r in same]
    assert backend.engine.stats["frame_hits"] > before


def test_a_verdict_only_batch_equals_one_by_one(rigged: TransformersBackend) -> None:
    frame = _image(60)
    requests = [JudgeRequest(prompt=_prompt(a, frame), rationale="off") for a in ACTIONS]
    batch = rigged.judge_batch(requests)
    assert [o.text for o in batch] == [rigged.judge(r).text for r in requests]
    assert all(o.n_tokens == 1 for o in batch)


# -- quantized models on the fast paths -----------------------------------------------------------


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_models_take_the_fast_paths(
    rigged_dirs: dict[str, Path], quantization: str
) -> None:
    pytest.importorskip("bitsandbytes")
    b = TransformersBackend(str(rigged_dirs["qwen3_vl"]), quantization=quantization,
                            max_new_tokens=8, **IMAGE)
    frame = _image(70)
    sync = b.judge(JudgeRequest(prompt=_prompt(ACTIONS[0], frame)))
    off = b.judge(JudgeRequest(prompt=_prompt(ACTIONS[0], frame), rationale="off"))
    assert off.text in WORDS and parse_answer(sync.text).verdict == parse_answer(off.text).verdict
    assert b.engine.stats["frame_hits"] == 1
    ours = _engine_logits(b, _prompt(ACTIONS[1], frame))  # through the cached frame prefix
    np.testing.assert_allclose(ours, _plain_logits(b, _prompt(ACTIONS[1], frame)), atol=1e-3)


def test_linear_patch_embedding_equals_the_convolution(
    tiny_dirs: dict[str, Path], arch: str
) -> None:
    from guard.backends.qwen_inputs import QwenInputBuilder
    from guard.backends.transformers_backend import MODEL_CLASSES, linear_patch_embed

    cls = getattr(transformers, MODEL_CLASSES[json.loads(
        (tiny_dirs[arch] / "config.json").read_text())["model_type"]])
    model = cls.from_pretrained(str(tiny_dirs[arch]), dtype=torch.float32).eval()
    builder = QwenInputBuilder.from_pretrained(
        str(tiny_dirs[arch]), image_token_id=model.config.image_token_id, use_processor="never")
    enc = builder.encode_images([_image(70, (128, 96))])

    def features() -> Any:
        with torch.inference_mode():
            out = model.get_image_features(enc["pixel_values"], enc["image_grid_thw"],
                                           return_dict=True)
        return torch.cat(tuple(out.pooler_output))

    conv = features()
    assert linear_patch_embed(model) and not linear_patch_embed(model)  # once
    torch.testing.assert_close(features(), conv, rtol=0, atol=1e-5)


# -- ONNX -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dirs(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Path]:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from guard.backends.onnx_export import export_onnx

    out = {}
    for a, d in tiny_dirs.items():
        res = export_onnx(str(d), tmp_path_factory.mktemp(f"onnx-{a}"), (64, 48))
        assert res.meta["check"]["verdict_agrees"]
        assert res.meta["check"]["max_abs_logit_diff"] < 1e-4
        out[a] = res.out
    return out


def test_onnx_backend_agrees_with_pytorch(
    onnx_dirs: dict[str, Path], backend: TransformersBackend, arch: str
) -> None:
    from guard.backends import create_backend
    from guard.backends.onnx_backend import OnnxBackend

    config = GuardConfig().with_overrides(**{
        "model.backend": "onnx", "model.id": str(onnx_dirs[arch]), "model.device": "cpu",
        "model.max_new_tokens": 12,
    })
    ob = create_backend(config)
    assert isinstance(ob, OnnxBackend) and ob.runner.providers == ["CPUExecutionProvider"]
    frame = _image(80)
    requests = [JudgeRequest(prompt=_prompt(a, frame), max_new_tokens=12) for a in ACTIONS]
    requests.append(JudgeRequest(prompt=_prompt(ACTIONS[0], _image(81)), max_new_tokens=12))
    for r in requests:
        o, t = ob.judge(r), backend.judge(r)
        assert (o.text, o.n_tokens) == (t.text, t.n_tokens)
        assert o.verdict_probs == pytest.approx(t.verdict_probs, abs=1e-5)
    assert [o.text for o in ob.judge_batch(requests)] == [backend.judge(r).text for r in requests]
    assert ob.engine.stats["frame_hits"] >= 2
    # A frame of another size is resized to the export's before the vision graph.
    big = _image(82, (128, 96))
    o = ob.judge(JudgeRequest(prompt=_prompt(ACTIONS[0], big), max_new_tokens=12))
    t = backend.judge(JudgeRequest(prompt=_prompt(ACTIONS[0], ob.fit(big)), max_new_tokens=12))
    assert o.text == t.text
    ob.close()


def test_onnx_verdict_first_on_a_rigged_model(
    rigged_dirs: dict[str, Path], rigged: TransformersBackend, arch: str, tmp_path: Path
) -> None:
    from guard.backends.onnx_backend import OnnxBackend
    from guard.cli.main import main

    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(rigged_dirs[arch]), "--out", str(out),
                 "--image-size", "64x48"]) == 0
    ob = OnnxBackend(str(out), device="cpu")
    for i, action in enumerate(ACTIONS):
        req = JudgeRequest(prompt=_prompt(action, _image(90 + i)), rationale="off")
        o, t = ob.judge(req), rigged.judge(req)
        assert o.text == t.text and o.text in WORDS
        assert o.verdict_probs == pytest.approx(t.verdict_probs, abs=1e-5)


def test_onnx_cuda_asked_by_name_must_be_in_use(
    onnx_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime-gpu whose CUDA libraries fail to load lists the CUDA provider, then runs the
    # session on the CPU with only a log line: `device: cuda` must refuse that, not judge slowly.
    import onnxruntime as ort

    from guard.backends.onnx_backend import OnnxBackend
    from guard.errors import BackendError

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    folder = str(next(iter(onnx_dirs.values())))
    with pytest.raises(BackendError, match="CUDA provider did not load"):
        OnnxBackend(folder, device="cuda")
    assert OnnxBackend(folder, device="auto").runner.providers == ["CPUExecutionProvider"]


def test_onnx_fp16_export_gives_the_pytorch_verdicts(
    rigged_dirs: dict[str, Path], rigged: TransformersBackend, arch: str, tmp_path: Path
) -> None:
    from guard.backends.onnx_backend import OnnxBackend
    from guard.cli.main import main

    out = tmp_path / "onnx16"
    assert main(["export", "onnx", "--model", str(rigged_dirs[arch]), "--out", str(out),
                 "--image-size", "64x48", "--dtype", "fp16"]) == 0
    meta = json.loads((out / "guard_onnx.json").read_text())
    assert meta["dtype"] == "float16" and meta["check"]["verdict_agrees"]
    assert np.load(out / "embed_tokens.npy").dtype == np.float16
    ob = OnnxBackend(str(out), device="cpu")  # ONNX Runtime 1.32 runs these graphs on a CPU
    for i, action in enumerate(ACTIONS):
        req = JudgeRequest(prompt=_prompt(action, _image(95 + i)), rationale="off")
        o, t = ob.judge(req), rigged.judge(req)
        assert o.text == t.text and o.text in WORDS
        assert o.verdict_probs == pytest.approx(t.verdict_probs, abs=2e-2)
    ob.close()


def test_onnx_usage_errors(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from guard.backends.onnx_backend import OnnxBackend, providers_for
    from guard.backends.onnx_export import parse_dtype, parse_image_size
    from guard.errors import BackendError, UsageError

    assert parse_image_size("640x480") == (640, 480)
    assert (parse_dtype("fp16"), parse_dtype("FP32")) == ("float16", "float32")
    with pytest.raises(UsageError, match="fp32 or fp16"):
        parse_dtype("bf16")
    with pytest.raises(UsageError, match="WIDTHxHEIGHT"):
        parse_image_size("640")
    with pytest.raises(BackendError, match="not an ONNX export"):
        OnnxBackend(str(tmp_path))
    assert providers_for("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers_for("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider"
    )
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        providers_for("cuda", ["CPUExecutionProvider"])
    # Fields of the transformers backend are refused when the config is loaded.
    for field, value in (("adapter", "lora"), ("quantization", "4bit"), ("dtype", "float16")):
        with pytest.raises(ConfigError, match=f"model.{field}: not a field of the onnx"):
            GuardConfig().with_overrides(**{"model.backend": "onnx", "model.id": "x",
                                            f"model.{field}": value})


# -- the quantization safety table and the benchmark's model builders -----------------------------


def test_quantization_table_runs_on_a_model_folder(
    rigged_dirs: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("cv2")
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("onnxruntime")
    from guard.bench.quant_safety import main
    from guard.world import generate

    split = generate("test_ood", 6, tmp_path / "test_ood", seed=0).parent
    out = tmp_path / "quant"
    assert main(["--model", str(rigged_dirs["qwen2_5_vl"]), "--data", str(split),
                 "--out", str(out), "--variants", "fp32,4bit,onnx", "--n-boot", "20"]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "4bit", "onnx"]
    assert all(r["n"] == 6 and 0.0 <= r["false_veto_rate"] <= 1.0 for r in rows)
    assert rows[0]["agrees_with_first"] == 1.0 and rows[2]["agrees_with_first"] == 1.0
    assert "| test_ood | onnx | 6 |" in (out / "table.md").read_text()


def test_quantization_table_reads_the_model_as_it_was_trained(tmp_path: Path) -> None:
    from guard.cli.demo import DEFAULT_MODEL_DIR
    from guard.prompting import trained_template

    if (DEFAULT_MODEL_DIR / "training_run_config.yaml").is_file():
        assert trained_template(str(DEFAULT_MODEL_DIR)) == "consequence_compact"
    assert trained_template(str(tmp_path)) is None
    (tmp_path / "training_run_config.yaml").write_text("data:\n  template: consequence_v1\n")
    assert trained_template(str(tmp_path)) == "consequence_v1"


def test_full_size_configs_match_the_real_parameter_counts(tiny_dirs: dict[str, Path]) -> None:
    from guard.backends.transformers_backend import MODEL_CLASSES
    from guard.bench.latency import FULL_SIZE, full_size_config

    expected = {"qwen2.5-vl-7b": 8.29e9, "qwen3-vl-4b": 4.44e9}
    for preset, (arch, _, _) in FULL_SIZE.items():
        config = full_size_config(preset, transformers.AutoConfig.from_pretrained(tiny_dirs[arch]))
        with torch.device("meta"):
            model = getattr(transformers, MODEL_CLASSES[arch])._from_config(config)
        n = sum(p.numel() for p in model.parameters())
        assert n == pytest.approx(expected[preset], rel=0.01), (preset, n)
