"""The torch fast path of the Qwen-VL image processor (`guard.backends.qwen_pixels`) gives the
stock PIL image processor's pixel_values, for the tiny Qwen2.5-VL (patch 14) and Qwen3-VL
(patch 16) models, at camera and odd sizes and under the guard's pixel bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from guard.backends.qwen_inputs import QwenInputBuilder  # noqa: E402
from guard.backends.qwen_pixels import fast_pixel_values  # noqa: E402
from guard.tiny import ARCHS, build_tiny_model  # noqa: E402

SIZES = [(640, 480), (480, 640), (112, 112), (64, 48), (333, 517), (1280, 720)]
BOUNDS = [(None, None), (3136, 401_408), (3136, 128 * 128)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=ARCHS)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(request.param, tmp_path_factory.mktemp(request.param), seed=0)


def _stock(model_dir: Path) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")


def _frame(size: tuple[int, int], seed: int) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("bounds", BOUNDS)
def test_fast_pixels_equal_the_stock_processor(model_dir: Path, bounds: tuple[Any, Any]) -> None:
    proc = _stock(model_dir)
    lo, hi = bounds
    kwargs = {} if lo is None else {"size": {"shortest_edge": lo, "longest_edge": hi}}
    for i, size in enumerate(SIZES):
        frame = _frame(size, i)
        ref = proc(images=[frame], return_tensors="pt", **kwargs)
        ours = fast_pixel_values([frame], proc, lo, hi)
        assert ours is not None
        assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"]), size
        assert ours["pixel_values"].dtype == ref["pixel_values"].dtype
        torch.testing.assert_close(ours["pixel_values"], ref["pixel_values"], rtol=0, atol=1e-6)
    # several images at once: concatenated, one grid row each
    frames = [_frame(s, 10 + i) for i, s in enumerate(SIZES[:3])]
    ref = proc(images=frames, return_tensors="pt", **kwargs)
    ours = fast_pixel_values(frames, proc, lo, hi)
    assert ours is not None and torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    torch.testing.assert_close(ours["pixel_values"], ref["pixel_values"], rtol=0, atol=1e-6)


def test_fast_pixels_decline_what_they_do_not_reproduce(model_dir: Path) -> None:
    proc = _stock(model_dir)
    rgba = _frame((64, 48), 0).convert("RGBA")
    assert fast_pixel_values([rgba], proc) is None  # the stock alpha handling decides
    proc.resample = 2  # bilinear
    assert fast_pixel_values([_frame((64, 48), 0)], proc) is None

    class TorchvisionBackend:
        backend = "torchvision"

    assert fast_pixel_values([_frame((64, 48), 0)], TorchvisionBackend()) is None


def test_input_builder_gives_the_same_inputs_with_and_without_the_fast_path(
    model_dir: Path,
) -> None:
    import json

    config = json.loads((model_dir / "config.json").read_text())
    builders = [
        QwenInputBuilder.from_pretrained(str(model_dir), image_token_id=config["image_token_id"],
                                         use_processor="never", min_pixels=3136,
                                         max_pixels=401_408)
        for _ in range(2)
    ]
    builders[1].fast_pixels = False
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "turn on the stove"}]}]
    frame = _frame((640, 480), 3)
    fast, stock = (b.from_messages(messages, [frame]) for b in builders)
    assert fast.keys() == stock.keys()
    for key in fast:
        torch.testing.assert_close(fast[key], stock[key], rtol=0, atol=1e-6)
    enc = [b.encode_images([frame]) for b in builders]
    torch.testing.assert_close(enc[0]["pixel_values"], enc[1]["pixel_values"], rtol=0, atol=1e-6)
