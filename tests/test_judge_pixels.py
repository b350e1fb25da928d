"""One sizing rule for every judge (`guard.imaging`): the guard resizes each frame once,
straight to the judge's patch grid under one pixel budget, the processor keeps that size, and a
remote judge (the openai backend) is sent the size a local backend sees.

The tiny Qwen2.5-VL (patch 14 x merge 2 = 28) and Qwen3-VL (16 x 2 = 32) folders keep their
processor's default bounds [3136, 200704] (`guard.tiny`), tighter than ``image.max_pixels``
(401408): the budget is the processor's.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from guard.config import GuardConfig
from guard.core import Guard
from guard.errors import ConfigError, InvalidInputError
from guard.imaging import (
    ImageGrid,
    backend_grid,
    fit_max_pixels,
    folder_grid,
    judge_size,
    pixel_bounds,
    resize_for_judge,
    smart_resize,
)
from guard.types import ActionProposal, Frame, Status
from tests.test_openai_backend import FakeServer

CAMERA = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
STOVE = ActionProposal(name="stove", description="turn on the stove")
# 640 x 480 under the tiny processors' budget (200704), worked by hand from smart_resize:
# beta = sqrt(307200 / 200704) = 1.237; 480 / beta = 388, 640 / beta = 517, floored to the grid.
EXPECTED = {"qwen2_5_vl": (504, 364), "qwen3_vl": (512, 384)}
FACTOR = {"qwen2_5_vl": 28, "qwen3_vl": 32}


# -- the rule ------------------------------------------------------------------------------------


def test_the_budget_is_the_tighter_of_the_guard_and_the_processor() -> None:
    proc = ImageGrid(28, 3136, 200_704)
    assert pixel_bounds(3136, 401_408, proc) == (3136, 200_704)
    assert pixel_bounds(3136, 128 * 128, proc) == (3136, 128 * 128)
    assert pixel_bounds(65_536, 401_408, ImageGrid(32, 3136, 16_777_216)) == (65_536, 401_408)
    assert pixel_bounds(3136, 401_408, ImageGrid(28)) == (3136, 401_408)  # remote: ours
    assert pixel_bounds(None, None, proc) == (3136, 200_704)
    assert pixel_bounds(300_000, 401_408, proc) == (200_704, 200_704)  # never lo > hi


@pytest.mark.parametrize(("arch", "factor"), FACTOR.items())
def test_a_camera_frame_goes_straight_to_the_grid(arch: str, factor: int) -> None:
    grid = ImageGrid(factor, 3136, 200_704)
    assert judge_size(640, 480, grid, min_pixels=3136, max_pixels=401_408) == EXPECTED[arch]
    # The fixed-size grid of an ONNX export wins; no grid only downscales, aspect kept.
    assert judge_size(640, 480, ImageGrid(28, size=(56, 56)), min_pixels=1, max_pixels=9) == (
        56, 56)
    assert judge_size(1280, 960, None, min_pixels=3136, max_pixels=640 * 480) == (640, 480)
    assert judge_size(640, 480, None, min_pixels=3136, max_pixels=401_408) == (640, 480)


def test_our_smart_resize_is_the_stock_one_and_judge_sizes_are_kept_by_it() -> None:
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        smart_resize as stock,
    )

    rng = np.random.default_rng(0)
    for _ in range(2000):
        w, h = (int(x) for x in rng.integers(1, 4000, 2))
        if max(w, h) / min(w, h) > 200:
            continue
        factor = int(rng.choice([28, 32]))
        hi = int(rng.choice([16_384, 200_704, 401_408, 12_845_056]))
        # (A budget narrower than a grid step, e.g. min = max, has no size the processor keeps.)
        lo = int(rng.choice([3136, 65_536] if hi > 65_536 else [3136]))
        assert smart_resize(h, w, factor, lo, hi) == stock(h, w, factor, lo, hi)
        jw, jh = judge_size(w, h, ImageGrid(factor, lo, hi), min_pixels=lo, max_pixels=hi)
        # What the processor does to the frame the guard sends: nothing.
        assert stock(jh, jw, factor, lo, hi) == (jh, jw), (w, h, factor, lo, hi)


def test_resize_for_judge_resamples_once_and_refuses_what_the_processor_refuses() -> None:
    image_cfg = GuardConfig().image

    class Judge:
        image_grid = ImageGrid(28, 3136, 200_704)

    im = resize_for_judge(CAMERA, image_cfg, Judge())
    assert im.size == EXPECTED["qwen2_5_vl"]
    # The one resample is PIL's bicubic from the camera frame, as the processor's own.
    ref = Image.fromarray(CAMERA).resize(EXPECTED["qwen2_5_vl"], Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(im), np.asarray(ref))
    # A frame already on the grid is not resampled at all.
    on_grid = CAMERA[:364, :504]
    assert np.array_equal(np.asarray(resize_for_judge(on_grid, image_cfg, Judge())), on_grid)
    # A backend without a grid (the test doubles) gets the old downscale, aspect kept.
    big = np.zeros((960, 1280, 3), np.uint8)
    assert resize_for_judge(big, image_cfg, object()).size == fit_max_pixels(big, 401_408).size
    with pytest.raises(InvalidInputError, match=r"^cam: 1000x2 cannot be judged: .*aspect"):
        resize_for_judge(np.zeros((2, 1000, 3), np.uint8), image_cfg, Judge(), source="cam")
    assert backend_grid(object()) is None


def test_a_strip_frame_is_an_invalid_input_veto_not_a_crash(config: GuardConfig) -> None:
    from guard.backends.scripted import ScriptedBackend

    backend = ScriptedBackend.answering("ALLOW")
    backend.image_grid = ImageGrid(28)  # type: ignore[attr-defined]
    with Guard(config.with_overrides(**{"model.warmup": False}), backend=backend) as g:
        d = g.check(Frame(image=np.zeros((2, 1000, 3), np.uint8), stamp=time.time(),
                          source="cam"), STOVE)
    assert (d.status, d.verdict.value) == (Status.INVALID_INPUT, "veto")
    assert d.error == ("cam: image is 1000x2, an aspect ratio over 200 (the Qwen-VL image "
                       "processors refuse it)")
    assert not backend.requests


def test_grid_factor_takes_a_number_or_a_family() -> None:
    assert GuardConfig().image.grid_factor == 28
    assert GuardConfig.from_dict({"image": {"grid_factor": "qwen3-vl"}}).image.grid_factor == 32
    assert GuardConfig.from_dict({"image": {"grid_factor": 32}}).image.grid_factor == 32
    with pytest.raises(ConfigError, match=r"image.grid_factor = 'llava'.*qwen3-vl"):
        GuardConfig.from_dict({"image": {"grid_factor": "llava"}})


def test_folder_grid_reads_the_processor_config_as_the_processor_does(tmp_path: Path) -> None:
    pre = tmp_path / "preprocessor_config.json"
    pre.write_text(json.dumps({"patch_size": 16, "merge_size": 2,
                               "size": {"shortest_edge": 65_536, "longest_edge": 16_777_216}}))
    assert folder_grid(tmp_path) == ImageGrid(32, 65_536, 16_777_216)
    # The hub's Qwen2.5-VL files carry both: the top-level keys win in the processor.
    pre.write_text(json.dumps({
        "patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 12_845_056,
        "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
    }))
    assert folder_grid(tmp_path) == ImageGrid(28, 3136, 12_845_056)
    assert folder_grid(tmp_path / "missing") is None
    pre.write_text("{not json")
    assert folder_grid(tmp_path) is None


# -- local judges: the tiny models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from guard.tiny import ARCHS, build_tiny_model

    return {a: build_tiny_model(a, tmp_path_factory.mktemp(a), seed=0) for a in ARCHS}


def _cfg(tmp_path: Path, model: str, **over: Any) -> GuardConfig:
    # model.device is the local backend's field (a remote one is an error to give it).
    local = {} if "model.backend" in over else {"model.device": "cpu"}
    return GuardConfig().with_overrides(**{
        "model.id": model, "model.max_new_tokens": 4, **local,
        "audit.path": str(tmp_path / "audit.jsonl"), "policy.deadline_ms": 120_000, **over,
    })


def _seen_by(guard: Guard) -> list[Image.Image]:
    """Record the images of every request the guard's backend gets."""
    seen: list[Image.Image] = []
    judge = guard.backend.judge

    def spy(request: Any) -> Any:
        seen.extend(request.prompt.images)
        return judge(request)

    guard.backend.judge = spy  # type: ignore[method-assign]
    return seen


def _check(guard: Guard, image: np.ndarray = CAMERA) -> Any:
    d = guard.check(Frame(image=image, stamp=time.time(), source="camera"), STOVE)
    assert d.status in (Status.OK, Status.ERROR), d  # judged (a random model may babble)
    assert "backend failed" not in (d.error or ""), d
    return d


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_the_local_judge_gets_the_frame_on_its_grid_and_its_processor_keeps_it(
    tiny_dirs: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoImageProcessor

    from guard.backends.qwen_inputs import image_size_kwargs

    with Guard(_cfg(tmp_path, str(tiny_dirs[arch]))) as g:
        assert g.backend.image_grid == ImageGrid(FACTOR[arch], 3136, 200_704)  # type: ignore[attr-defined]
        seen = _seen_by(g)
        _check(g)
        builder = g.backend.inputs  # type: ignore[attr-defined]
    (im,) = seen
    assert im.size == EXPECTED[arch]
    w, h = im.size
    patch = FACTOR[arch] // 2
    enc = builder.encode_images([im])
    assert enc["image_grid_thw"].tolist() == [[1, h // patch, w // patch]]
    # No second resample: the stock PIL processor, under the bounds the backend passes it,
    # gives what it gives with its resize switched off; and so does the backend's fast path.
    stock = AutoImageProcessor.from_pretrained(str(tiny_dirs[arch]), backend="pil")
    bounds = image_size_kwargs(stock, builder.min_pixels, builder.max_pixels)
    resized = stock(images=[im], return_tensors="pt", **bounds)
    kept = stock(images=[im], return_tensors="pt", do_resize=False)
    assert torch.equal(resized["image_grid_thw"], kept["image_grid_thw"])
    assert torch.equal(resized["pixel_values"], kept["pixel_values"])
    torch.testing.assert_close(enc["pixel_values"], kept["pixel_values"], rtol=0, atol=1e-6)
    # A tighter guard budget wins over the processor's.
    with Guard(_cfg(tmp_path, str(tiny_dirs[arch]), **{"image.max_pixels": 128 * 128})) as g:
        seen = _seen_by(g)
        _check(g)
        assert g.backend.inputs.max_pixels == 128 * 128  # type: ignore[attr-defined]
    assert seen[0].size[0] * seen[0].size[1] <= 128 * 128
    assert seen[0].size == tuple(
        reversed(smart_resize(480, 640, FACTOR[arch], 3136, 128 * 128)))


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_a_remote_judge_is_sent_the_size_the_local_one_sees(
    tiny_dirs: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    folder = str(tiny_dirs[arch])
    with Guard(_cfg(tmp_path, folder)) as g:
        local = _seen_by(g)
        _check(g)
    server = FakeServer()
    try:
        remote = {"model.backend": "openai", "model.openai.base_url": server.url,
                  "model.warmup": False}
        # The served folder: its processor config gives the grid and the budget.
        with Guard(_cfg(tmp_path, folder, **remote)) as g:
            assert g.backend.image_grid == ImageGrid(FACTOR[arch], 3136, 200_704)  # type: ignore[attr-defined]
            _check(g)
        # A hub id not readable here: the family's factor under the configured budget.
        family = {"qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}[arch]
        with Guard(_cfg(tmp_path, "Qwen/served-elsewhere", **remote, **{
            "image.grid_factor": family, "image.max_pixels": 200_704,
        })) as g:
            _check(g)
    finally:
        server.close()
    sizes = []
    for _, _, body in server.requests:
        url = body["messages"][-1]["content"][0]["image_url"]["url"]
        data = base64.b64decode(url.split(",", 1)[1])
        sizes.append(Image.open(io.BytesIO(data)).size)
    assert sizes == [local[-1].size, local[-1].size] == [EXPECTED[arch]] * 2


def test_an_onnx_judge_gets_frames_at_its_graph_size_resampled_once(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from guard.backends.onnx_export import export_onnx

    out = export_onnx(str(tiny_dirs["qwen2_5_vl"]), tmp_path / "onnx", (640, 480), check=False)
    assert out.meta["image_grid_thw"] == [1, 26, 36]  # 364 / 14, 504 / 14
    with Guard(_cfg(tmp_path, str(out.out), **{"model.backend": "onnx"})) as g:
        assert g.backend.image_grid.size == EXPECTED["qwen2_5_vl"]  # type: ignore[attr-defined]
        seen = _seen_by(g)
        _check(g)
        big = np.random.default_rng(8).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        _check(g, big)  # a frame of another size and aspect: resized to the graph's
        # What the graph sees is the guard's one resample (fit() and the processor keep it).
        assert g.backend.fit(seen[-1]) is seen[-1]  # type: ignore[attr-defined]
    assert [im.size for im in seen] == [EXPECTED["qwen2_5_vl"]] * 2


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_the_torchvision_processor_keeps_the_judge_size_too(
    tiny_dirs: dict[str, Path], arch: str
) -> None:
    """The stock fast (torchvision) processor, where torchvision imports (not on CPU-only
    machines whose torchvision binary does not load beside torch: skipped there)."""
    import torch
    from transformers import AutoImageProcessor

    from guard.backends.qwen_inputs import torchvision_works

    if not torchvision_works():
        pytest.skip("torchvision does not import here")
    proc = AutoImageProcessor.from_pretrained(str(tiny_dirs[arch]), backend="torchvision")
    grid = ImageGrid(FACTOR[arch], 3136, 200_704)
    im = resize_for_judge(CAMERA, GuardConfig().image, type("J", (), {"image_grid": grid})())
    resized = proc(images=[im], return_tensors="pt")
    kept = proc(images=[im], return_tensors="pt", do_resize=False)
    assert torch.equal(resized["image_grid_thw"], kept["image_grid_thw"])
    torch.testing.assert_close(resized["pixel_values"], kept["pixel_values"], rtol=0, atol=1e-6)
