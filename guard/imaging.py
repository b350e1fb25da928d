"""Decoding and sizing camera images, with one-line errors for anything that cannot be judged.

Decoding uses Pillow: it reads the header first, so an absurdly large image is refused before
its pixels are allocated.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from guard.errors import InvalidInputError

DEFAULT_MAX_INPUT_PIXELS = 50_000_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024


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


def fit_max_pixels(image: np.ndarray, max_pixels: int) -> Image.Image:
    """A PIL image no larger than `max_pixels`, aspect ratio kept.

    The Qwen image processors round to their patch grid themselves; downscaling here bounds
    the work (and the bytes sent to a remote server) whatever the camera resolution.
    """
    im = Image.fromarray(image)
    w, h = im.size
    if w * h <= max_pixels:
        return im
    scale = math.sqrt(max_pixels / (w * h))
    new = (max(1, int(w * scale)), max(1, int(h * scale)))
    return im.resize(new, Image.Resampling.BICUBIC)
