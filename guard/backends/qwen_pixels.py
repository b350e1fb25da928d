"""A fast path for the Qwen-VL image processor: the same ``pixel_values`` in a fraction of the
time.

The stock ``Qwen2VLImageProcessor`` (its PIL backend where torchvision is missing) turns a PIL
frame into a numpy array, back into a PIL image, resizes it, rescales it in float64,
normalizes it and patchifies it with numpy copies: about 11 ms for a 640 x 480 frame on one
CPU core, on the critical path of every new frame. Here:

- the resize is PIL's own bicubic resize of the PIL frame, called directly (same call, same
  uint8 pixels; skipped when ``smart_resize`` keeps the size, where PIL would return a copy);
- patchify first: one permuted copy of the uint8 pixels into the patch order, as float32;
- rescale and normalize in place in float32 torch ops in the stock order. The stock rescale is
  float64 then float32; ``u / 255`` in float32 gives the same value for every uint8 level u
  (checked for all 256 at first use; for another rescale factor without such a divisor a
  256-entry table per channel, computed with the stock arithmetic, is used instead), so the
  values are bit-identical;
- the temporal patch is the frame twice (as the stock processor does for an image): one copy.

`fast_pixel_values` returns None when the processor is configured in a way this does not
reproduce (the torchvision backend, which resizes with torch; another resample filter; rescale
or normalize off; a frame that is not RGB); the caller then uses the stock processor.
`tests/test_qwen_pixels.py` holds the equality against the stock processor for Qwen2.5-VL and
Qwen3-VL at several sizes, 640 x 480 among them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from guard.imaging import smart_resize

if TYPE_CHECKING:
    import torch
    from PIL import Image

_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the processors' default


@functools.lru_cache(maxsize=8)
def _divisor(scale: float) -> float | None:
    """A float32 divisor d with float32(u) / d equal to the stock float64 rescale of every
    uint8 level u (1/255 has one: 255), or None."""
    d = round(1.0 / scale)
    levels = np.arange(256)
    stock = (levels.astype(np.float64) * scale).astype(np.float32)
    ours = levels.astype(np.float32) / np.float32(d)
    return float(d) if d > 0 and bool((stock == ours).all()) else None


@functools.lru_cache(maxsize=8)
def _table(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """Normalized value of every uint8 level per channel, (3 * 256,) float32, computed as the
    stock processor computes it pixel by pixel."""
    import torch

    levels = np.arange(256, dtype=np.uint8)
    rescaled = (levels.astype(np.float64) * scale).astype(np.float32)
    m, s = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    table = (rescaled[None, :] - m[:, None]) / s[:, None]
    return torch.from_numpy(np.ascontiguousarray(table.reshape(-1)))


def _settings(image_processor: Any) -> dict[str, Any] | None:
    """The processor's settings when the fast path reproduces them, else None."""
    p = image_processor
    # The torchvision backend resizes with torch (another bicubic): its output is its own.
    if getattr(p, "backend", None) != "pil":
        return None
    if not (getattr(p, "do_resize", False) and getattr(p, "do_rescale", False)
            and getattr(p, "do_normalize", False)):
        return None
    if int(getattr(p, "resample", -1) or -1) != _BICUBIC:
        return None
    mean, std = getattr(p, "image_mean", None), getattr(p, "image_std", None)
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return None
    try:
        return {
            "patch": int(p.patch_size), "merge": int(p.merge_size),
            "temporal": int(p.temporal_patch_size), "scale": float(p.rescale_factor),
            "mean": tuple(float(x) for x in mean), "std": tuple(float(x) for x in std),
        }
    except (AttributeError, TypeError, ValueError):
        return None


def _size_bounds(image_processor: Any, min_pixels: int | None,
                 max_pixels: int | None) -> tuple[int, int] | None:
    own = getattr(image_processor, "size", None)

    def default(key: str) -> Any:
        return own.get(key) if isinstance(own, dict) else getattr(own, key, None)

    lo = min_pixels if min_pixels is not None else default("shortest_edge")
    hi = max_pixels if max_pixels is not None else default("longest_edge")
    if not lo or not hi:
        return None
    return int(lo), int(hi)


def _patchify(image: Image.Image, s: dict[str, Any]) -> tuple[torch.Tensor, tuple[int, int]]:
    import torch

    p, m, t = s["patch"], s["merge"], s["temporal"]
    pixels = torch.from_numpy(np.array(image))  # (H, W, 3) uint8, a writable copy
    h, w = int(pixels.shape[0]), int(pixels.shape[1])
    gh, gw = h // p, w // p
    # (gh/m, m, p, gw/m, m, p, C) -> (gh/m, gw/m, m, m, C, p, p): the stock patch order
    blocks = pixels.view(gh // m, m, p, gw // m, m, p, 3).permute(0, 3, 1, 4, 6, 2, 5)
    divisor = _divisor(s["scale"])
    if divisor is not None:
        # float32 arithmetic in the stock order: rescale, minus mean, over std (exact).
        values = blocks.to(torch.float32)  # the permuted copy
        values.div_(divisor)
        values.sub_(torch.tensor(s["mean"], dtype=torch.float32).view(3, 1, 1))
        values.div_(torch.tensor(s["std"], dtype=torch.float32).view(3, 1, 1))
    else:
        index = blocks.to(torch.int64)  # the permuted copy, as lookup indices
        index += torch.arange(3, dtype=torch.int64).view(3, 1, 1) * 256
        values = _table(s["scale"], s["mean"], s["std"])[index]
    # values: (gh/m, gw/m, m, m, 3, p, p); the temporal patch repeats the frame
    out = values.unsqueeze(5).expand(*values.shape[:5], t, p, p)
    return out.reshape(gh * gw, 3 * t * p * p), (gh, gw)


def fast_pixel_values(
    images: Sequence[Image.Image],
    image_processor: Any,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> dict[str, torch.Tensor] | None:
    """``pixel_values`` and ``image_grid_thw`` for `images`, equal to the stock image
    processor's, or None when this path does not reproduce its settings (then call it).

    Args:
        images: PIL images.
        image_processor: A ``Qwen2VLImageProcessor`` (any backend); only its settings are read.
        min_pixels: Lower bound on each resized image's area (None: the processor's).
        max_pixels: Upper bound on each resized image's area (None: the processor's).
    """
    import torch

    settings = _settings(image_processor)
    bounds = _size_bounds(image_processor, min_pixels, max_pixels)
    if settings is None or bounds is None or not images:
        return None
    if any(getattr(im, "mode", None) != "RGB" for im in images):
        return None  # the stock conversion (e.g. alpha over white) is left to the stock code
    factor = settings["patch"] * settings["merge"]
    patches, grids = [], []
    for im in images:
        w, h = im.size
        new_h, new_w = smart_resize(h, w, factor, bounds[0], bounds[1])
        if (new_w, new_h) != (w, h):
            im = im.resize((new_w, new_h), resample=_BICUBIC)
        flat, (gh, gw) = _patchify(im, settings)
        patches.append(flat)
        grids.append([1, gh, gw])
    pixel_values = patches[0] if len(patches) == 1 else torch.cat(patches)
    return {"pixel_values": pixel_values,
            "image_grid_thw": torch.tensor(grids, dtype=torch.int64)}


__all__ = ["fast_pixel_values", "smart_resize"]
