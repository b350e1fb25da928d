"""Decoding and sizing camera images, with one-line errors for anything that cannot be judged.

Decoding uses Pillow: it reads the header first, so an absurdly large image is refused before
its pixels are allocated.

Sizing follows one rule (`judge_size`, applied by the guard's core through `resize_for_judge`):
each frame is resized once, straight to a size the judge's image processor keeps as it is, under
one pixel budget shared by local and remote backends:

- **budget**: the area lies within ``[max(image.min_pixels, processor min),
  min(image.max_pixels, processor max)]`` (`pixel_bounds`): the guard's bounds and the model
  folder's processor bounds, whichever is tighter on each side;
- **grid**: both sides are multiples of the processor's factor, patch size x spatial merge
  (Qwen2-VL and Qwen2.5-VL: 14 x 2 = 28; Qwen3-VL: 16 x 2 = 32), chosen by Qwen's own
  ``smart_resize`` (aspect ratio kept as well as the grid allows), so the processor's resize
  is the identity and the frame is resampled once (PIL bicubic, the processor's own filter);
- **who knows the grid**: a backend says it through an ``image_grid`` attribute (an
  `ImageGrid`; `backend_grid` reads it). The local backends read their processor; the openai
  backend reads the served model's folder when ``model.id`` is one, else takes
  ``image.grid_factor`` (the remote family's factor) and the guard's bounds; an ONNX export
  has one fixed size, which every frame is resized to;
- a backend with no grid (the test doubles) gets the frame downscaled to ``image.max_pixels``,
  aspect kept, and no grid rounding (`fit_max_pixels`).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from guard.errors import InvalidInputError

if TYPE_CHECKING:
    from guard.config import ImageConfig

DEFAULT_MAX_INPUT_PIXELS = 50_000_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_ASPECT_RATIO = 200
"""Longest over shortest side the Qwen-VL image processors accept (`smart_resize`)."""


def decode_image_file(
    path: str | Path,
    *,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> np.ndarray:
    """Read an image file into an RGB uint8 array, or raise InvalidInputError."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise InvalidInputError(f"{p}: image file not found") from None
    except OSError as exc:
        raise InvalidInputError(f"{p}: cannot read image file: {exc.strerror}") from None
    if not p.is_file():
        raise InvalidInputError(f"{p}: not a file")
    if size > max_file_bytes:
        raise InvalidInputError(
            f"{p}: image file is {size} bytes, over the {max_file_bytes} byte limit"
        )
    return decode_image_bytes(p.read_bytes(), source=str(p), max_input_pixels=max_input_pixels)


def decode_image_bytes(
    data: bytes, *, source: str = "image", max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) into an RGB uint8 array."""
    if not data:
        raise InvalidInputError(f"{source}: image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns before raising on decompression bombs; we report our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_input_pixels:
                raise InvalidInputError(
                    f"{source}: image is {w}x{h} = {w * h} pixels, over the "
                    f"{max_input_pixels} pixel limit"
                )
            im.load()  # decodes fully: a truncated file fails here, not later
            # The orientation a camera recorded (EXIF, as phones write it) is applied, as
            # transformers' load_image does: the judge sees the scene upright, as viewers
            # show it, not turned on its side.
            ImageOps.exif_transpose(im, in_place=True)
            if im.mode in _WIDE_MODES:
                return _wide_to_rgb(np.asarray(im), source)
            rgb = im.convert("RGB")
    except InvalidInputError:
        raise
    except Image.DecompressionBombError:
        raise InvalidInputError(f"{source}: image is too large to decode safely") from None
    except Exception as exc:  # Pillow raises many types for bad data; all mean "cannot decode"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"{source}: not a decodable image ({reason})") from None
    return np.asarray(rgb, dtype=np.uint8)


# Pillow's single-channel modes wider than 8 bits: its own convert("RGB") clips them (a 16-bit
# PNG turns white, a NaN float image black), so they are scaled here instead.
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def _wide_to_rgb(gray: np.ndarray, source: str) -> np.ndarray:
    """A 16/32-bit integer or float grey image as RGB uint8.

    Integers are taken as 16-bit samples (the top 8 bits kept); floats must be finite and
    are read as [0, 1] when no sample exceeds 1, else as [0, 255] (clipped).
    """
    if gray.dtype.kind == "f":
        if not np.isfinite(gray).all():
            raise InvalidInputError(f"{source}: float image holds NaN or infinite samples")
        scale = 255.0 if gray.size and float(gray.max()) <= 1.0 else 1.0
        out = np.clip(np.rint(gray.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    else:
        out = (np.clip(gray.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def check_array(image: np.ndarray, *, source: str, max_input_pixels: int) -> None:
    """Refuse arrays that are not judgeable RGB images."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError(
            f"{source}: image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}"
        )
    h, w = image.shape[:2]
    if h * w == 0:
        raise InvalidInputError(f"{source}: image is empty ({w}x{h})")
    if h * w > max_input_pixels:
        raise InvalidInputError(
            f"{source}: image is {w}x{h} = {w * h} pixels, over the {max_input_pixels} limit"
        )
    if max(h, w) > MAX_ASPECT_RATIO * min(h, w):
        raise InvalidInputError(
            f"{source}: image is {w}x{h}, an aspect ratio over {MAX_ASPECT_RATIO} (the Qwen-VL "
            "image processors refuse it)"
        )


def fit_max_pixels(image: np.ndarray, max_pixels: int) -> Image.Image:
    """A PIL image no larger than `max_pixels`, aspect ratio kept, not rounded to any grid.

    What a judge that reports no `ImageGrid` (the test doubles) is shown; `resize_for_judge`
    takes it for such a backend.
    """
    im = Image.fromarray(image)
    size = judge_size(im.width, im.height, None, min_pixels=1, max_pixels=max_pixels)
    return im if size == im.size else im.resize(size, Image.Resampling.BICUBIC)


# -- the judge's grid and the one pixel budget ----------------------------------------------------

_BICUBIC = Image.Resampling.BICUBIC  # the Qwen image processors' resample filter


@dataclass(frozen=True)
class ImageGrid:
    """The image sizes a judge's image processor takes without resampling.

    A Qwen-VL processor resizes every image with `smart_resize`: both sides to multiples of
    `factor`, the area within ``[min_pixels, max_pixels]``; a size it maps to itself passes
    unchanged.

    Attributes:
        factor: Side multiple: patch size x spatial merge (28 for Qwen2.5-VL, 32 for Qwen3-VL).
        min_pixels: The processor's lower area bound; None when not known (a remote server).
        max_pixels: The processor's upper area bound; None when not known.
        size: ``(width, height)`` of a judge compiled for one image size (an ONNX export's
            vision graph): every frame is resized to it, whatever its aspect ratio.
    """

    factor: int
    min_pixels: int | None = None
    max_pixels: int | None = None
    size: tuple[int, int] | None = None


def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
    """The Qwen-VL processors' target ``(height, width)``: both sides multiples of `factor`,
    area within ``[min_pixels, max_pixels]``, aspect ratio kept as well as possible (the same
    arithmetic as ``transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.smart_resize``).

    Raises:
        ValueError: The aspect ratio is over 200 (the processors refuse such images).
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got "
            f"{max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def pixel_bounds(min_pixels: int | None, max_pixels: int | None,
                 grid: ImageGrid | None) -> tuple[int | None, int | None]:
    """The pixel budget: the guard's area bounds and the processor's own, whichever is tighter
    on each side (None where neither is known; the lower bound never above the upper)."""
    lo = _tighter(max, min_pixels, grid.min_pixels if grid else None)
    hi = _tighter(min, max_pixels, grid.max_pixels if grid else None)
    if lo is not None and hi is not None:
        lo = min(lo, hi)
    return lo, hi


def _tighter(pick: Any, a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return a if b is None else b
    return int(pick(a, b))


def judge_size(width: int, height: int, grid: ImageGrid | None, *, min_pixels: int,
               max_pixels: int) -> tuple[int, int]:
    """The ``(width, height)`` a frame is shown to the judge at: the one sizing rule.

    With a grid, `smart_resize` under the `pixel_bounds` budget, taken to its fixed point:
    the size the processor's own `smart_resize` keeps (one exists unless the budget is
    narrower than a grid step, e.g. min = max). A fixed-size grid gives its size. Without a
    grid, the frame is only downscaled to `max_pixels`, aspect kept.

    Raises:
        ValueError: The aspect ratio is over 200 and a grid is given.
    """
    if grid is None:
        if width * height <= max_pixels:
            return width, height
        scale = math.sqrt(max_pixels / (width * height))
        return max(1, int(width * scale)), max(1, int(height * scale))
    if grid.size is not None:
        return grid.size
    lo, hi = pixel_bounds(min_pixels, max_pixels, grid)
    assert lo is not None and hi is not None  # the guard's bounds are always given
    h, w = height, width
    # One step gives the fixed point except where a side is clamped to one grid step (aspect
    # ratios near the processors' limit of 200): the other side then shrinks a step at a time.
    for _ in range(64):
        nh, nw = smart_resize(h, w, grid.factor, lo, hi)
        if (nh, nw) == (h, w):
            break
        h, w = nh, nw
    return w, h


def backend_grid(backend: object) -> ImageGrid | None:
    """The grid a backend reports through its optional ``image_grid`` attribute, or None."""
    grid = getattr(backend, "image_grid", None)
    return grid if isinstance(grid, ImageGrid) else None


def resize_for_judge(image: np.ndarray, config: ImageConfig, backend: object = None, *,
                     source: str = "frame") -> Image.Image:
    """`image` (RGB uint8) as the judge is shown it: resized once, with PIL's bicubic filter,
    to `judge_size` under `config` (``image.min_pixels``, ``image.max_pixels``) and the
    backend's grid; the array itself, wrapped, when it is already that size.

    Raises:
        InvalidInputError: The frame's aspect ratio is one the judge's processor refuses.
    """
    h, w = image.shape[:2]
    try:
        size = judge_size(w, h, backend_grid(backend), min_pixels=config.min_pixels,
                          max_pixels=config.max_pixels)
    except ValueError as exc:
        raise InvalidInputError(f"{source}: {w}x{h} cannot be judged: {exc}") from None
    im = Image.fromarray(image)
    return im if size == (w, h) else im.resize(size, _BICUBIC)


def processor_grid(image_processor: Any) -> ImageGrid | None:
    """The grid of a loaded Qwen-VL image processor (its own bounds), or None when it does not
    look like one (no patch and merge sizes)."""
    try:
        factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    except (AttributeError, TypeError, ValueError):
        return None
    size = getattr(image_processor, "size", None)

    def bound(key: str, legacy: str) -> int | None:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value is None:
            value = getattr(image_processor, legacy, None)
        return int(value) if value else None

    return ImageGrid(factor, bound("shortest_edge", "min_pixels"),
                     bound("longest_edge", "max_pixels"))


def folder_grid(folder: str | Path) -> ImageGrid | None:
    """The grid recorded in a model folder's ``preprocessor_config.json`` (Qwen-VL keys:
    ``patch_size``, ``merge_size``, ``size.shortest_edge``/``longest_edge`` or the older
    ``min_pixels``/``max_pixels``), or None when the folder has none or it is not a Qwen-VL
    processor's. Read without transformers: what a remote server serving that folder uses."""
    path = Path(folder).expanduser() / "preprocessor_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        factor = int(data["patch_size"]) * int(data.get("merge_size", 2))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    size = data.get("size") if isinstance(data.get("size"), dict) else {}

    def bound(key: str, legacy: str) -> int | None:
        # The processor takes a top-level min_pixels/max_pixels over its size dict.
        value = data.get(legacy)
        if value is None:
            value = size.get(key)
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    return ImageGrid(factor, bound("shortest_edge", "min_pixels"),
                     bound("longest_edge", "max_pixels"))
