# Copyright 2026 embodied-guard maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Conversions between ROS messages and the guard's types, without importing ROS.

Everything here takes plain values (or duck-typed message objects), so it runs and is tested
where rclpy is absent, and the node stays a thin layer over it. No cv_bridge: it is not on
PyPI, and the five encodings cameras actually send are a reshape and a channel swap.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

# The verdict constants of guard_interfaces/msg/Decision. Jazzy messages do not range-check
# uint8 fields by default, so a wrong mapping would go out silently: it is written once, here.
VERDICT_CODES = {'allow': 0, 'annotate': 1, 'veto': 2}

# encoding -> (channels in the message, indices that give R, G, B; None for mono).
_ENCODINGS: dict[str, tuple[int, tuple[int, int, int] | None]] = {
    'rgb8': (3, (0, 1, 2)),
    'bgr8': (3, (2, 1, 0)),
    'rgba8': (4, (0, 1, 2)),
    'bgra8': (4, (2, 1, 0)),
    'mono8': (1, None),
}

SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


class ImageConversionError(ValueError):
    """A camera image that cannot be turned into an RGB array; the message says why."""


def verdict_code(verdict: str) -> int:
    """Map a guard verdict to the `Decision` constant (ALLOW=0, ANNOTATE=1, VETO=2).

    Args:
        verdict: 'allow', 'annotate' or 'veto' (a `guard.types.Verdict` works too).

    Returns:
        The uint8 value of `guard_interfaces/msg/Decision.verdict`.

    Raises:
        ValueError: for anything else; never guessed, since a wrong code could read as ALLOW.
    """
    key = getattr(verdict, 'value', verdict)
    try:
        return VERDICT_CODES[key]
    except KeyError:
        raise ValueError(f'unknown verdict {verdict!r}') from None


def image_to_rgb(
    *, height: int, width: int, encoding: str, step: int, data: Any,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Turn the fields of a `sensor_msgs/Image` into an RGB uint8 array (H, W, 3).

    Rows may be padded (`step` larger than width times channels): the padding is dropped.
    The result is a fresh contiguous array, so it never aliases the message's buffer.

    Args:
        height: rows.
        width: columns.
        encoding: one of `SUPPORTED_ENCODINGS`.
        step: bytes per row in `data`.
        data: the pixel bytes (bytes, bytearray, memoryview or array.array of uint8).
        max_pixels: refuse images with more pixels than this (None: no limit).

    Returns:
        An RGB uint8 array of shape (height, width, 3).

    Raises:
        ImageConversionError: unsupported encoding, empty image, or sizes that do not add up.
    """
    spec = _ENCODINGS.get(encoding)
    if spec is None:
        raise ImageConversionError(
            f'unsupported image encoding {encoding!r} (supported: '
            f"{', '.join(SUPPORTED_ENCODINGS)})"
        )
    channels, order = spec
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'image is empty ({width}x{height})')
    if max_pixels is not None and width * height > max_pixels:
        raise ImageConversionError(
            f'image is {width}x{height} = {width * height} pixels, over the {max_pixels} '
            'pixel limit'
        )
    row = width * channels
    if step < row:
        raise ImageConversionError(
            f'step {step} is smaller than width * channels ({width} * {channels} = {row}) '
            f'for {encoding}'
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    # The last row needs only its pixels, not its padding (some drivers trim it).
    needed = step * (height - 1) + row
    if buf.size < needed:
        raise ImageConversionError(
            f'image data has {buf.size} bytes, {width}x{height} {encoding} with step {step} '
            f'needs {needed}'
        )
    if buf.size < step * height:
        buf = np.concatenate([buf[:needed], np.zeros(step * height - needed, np.uint8)])
    rows = buf[: step * height].reshape(height, step)[:, :row]
    pixels = rows.reshape(height, width, channels)
    if order is None:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    return np.ascontiguousarray(pixels[:, :, list(order)])


def stamp_to_seconds(sec: int, nanosec: int) -> float:
    """Convert a `builtin_interfaces/Time` (sec, nanosec) to float seconds."""
    return float(sec) + float(nanosec) * 1e-9


def seconds_to_stamp(seconds: float | None) -> tuple[int, int]:
    """Convert float seconds to (sec, nanosec) for `builtin_interfaces/Time`; None gives (0, 0).

    Rounded to the nanosecond, carrying into seconds, so 1.9999999999 gives (2, 0) and never
    an out-of-range nanosec.
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return 0, 0
    total = round(seconds * 1e9)
    return int(total // 1_000_000_000), int(total % 1_000_000_000)


def parse_arguments_json(text: str) -> dict[str, Any]:
    """Parse `ActionProposal.arguments_json` ('' means no arguments).

    Raises:
        ValueError: not JSON, or JSON that is not an object.
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'arguments_json is not valid JSON: {exc}') from None
    if not isinstance(value, dict):
        raise ValueError(
            f'arguments_json must be a JSON object, got {type(value).__name__}'
        )
    return value


def percentile(values: list[float], q: float) -> float | None:
    """Return the nearest-rank q-th percentile of `values` (q in 0..100); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
