"""Camera images in every encoding guard.wire reads, with the RGB frame each must give.

Shared by tests/test_wire.py (plain objects) and tests/ros/test_wire_ros.py (rclpy messages
through the node, and the same bytes through a bag and `guard replay`'s reader).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEIGHT, WIDTH = 4, 6  # even: every cell of a Bayer mosaic and every YUV pair is whole
PAD = 5  # bytes of padding after each row, as some drivers align rows


@dataclass(frozen=True)
class Case:
    """One encoded image: the `sensor_msgs/Image` fields and the expected RGB frame."""

    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: int
    data: bytes
    want: np.ndarray | None  # None: compare with another implementation (YUV vs OpenCV)

    def fields(self) -> dict[str, object]:
        return {
            "height": self.height, "width": self.width, "encoding": self.encoding,
            "step": self.step, "is_bigendian": self.is_bigendian, "data": self.data,
        }


def _pack(samples: np.ndarray, bigendian: bool, pad: int) -> tuple[bytes, int]:
    """Rows of `samples` (H, W*C) as bytes with `pad` bytes of 0xAB after each row."""
    if samples.dtype.itemsize > 1:
        samples = samples.astype(samples.dtype.newbyteorder(">" if bigendian else "<"))
    rows = np.ascontiguousarray(samples).view(np.uint8).reshape(samples.shape[0], -1)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return padded.tobytes(), padded.shape[1]


def _case(encoding: str, samples: np.ndarray, want: np.ndarray | None, *, big: bool = False,
          pad: int = PAD) -> Case:
    data, step = _pack(samples.reshape(samples.shape[0], -1), big, pad)
    return Case(encoding, samples.shape[0], WIDTH, step, int(big), data, want)


def cases(seed: int = 0) -> list[Case]:
    """Every supported encoding (16/32-bit ones in both byte orders), rows padded."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)
    grey = rgb[:, :, 0]
    grey_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    out: list[Case] = []
    for enc, px in [
        ("rgb8", rgb), ("bgr8", rgb[:, :, ::-1]), ("8UC3", rgb[:, :, ::-1]),
        ("rgba8", np.concatenate([rgb, alpha], 2)),
        ("bgra8", np.concatenate([rgb[:, :, ::-1], alpha], 2)),
        ("8UC4", np.concatenate([rgb[:, :, ::-1], alpha], 2)),
        ("mono8", grey), ("8UC1", grey),
    ]:
        out.append(_case(enc, np.ascontiguousarray(px), grey_rgb if px.ndim == 2 else rgb))
    # 16-bit: the top byte is the 8-bit value, the low byte noise that must not show.
    low = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint16)
    wide = rgb.astype(np.uint16) << 8 | low[:, :, :3]
    wide_a = np.concatenate([wide, alpha.astype(np.uint16) << 8], 2)
    for big in (False, True):
        for enc, px in [
            ("rgb16", wide), ("bgr16", wide[:, :, ::-1]), ("rgba16", wide_a),
            ("bgra16", np.concatenate([wide[:, :, ::-1], wide_a[:, :, 3:]], 2)),
        ]:
            out.append(_case(enc, np.ascontiguousarray(px), rgb, big=big))
        for enc in ("mono16", "16UC1"):
            out.append(_case(enc, grey.astype(np.uint16) << 8 | low[:, :, 3], grey_rgb, big=big))
        # float grey in [0, 1] (read as [0, 1] since no sample exceeds 1)
        out.append(_case("32FC1", (grey / 255.0).astype(np.float32), grey_rgb, big=big))
    # Bayer: a scene whose every 2x2 cell is one colour demosaics back to exactly that scene.
    cells = rng.integers(0, 256, (HEIGHT // 2, WIDTH // 2, 3), dtype=np.uint8)
    scene = np.repeat(np.repeat(cells, 2, axis=0), 2, axis=1)
    channel = {"r": 0, "g": 1, "b": 2}
    for pattern in ("rggb", "bggr", "gbrg", "grbg"):
        mosaic = np.empty((HEIGHT, WIDTH), np.uint8)
        for i, c in enumerate(pattern):
            dy, dx = divmod(i, 2)
            mosaic[dy::2, dx::2] = scene[dy::2, dx::2, channel[c]]
        out.append(_case(f"bayer_{pattern}8", mosaic, scene))
        noise = rng.integers(0, 256, mosaic.shape, dtype=np.uint16)
        out.append(_case(f"bayer_{pattern}16", mosaic.astype(np.uint16) << 8 | noise, scene,
                         big=True))
    # YUV 4:2:2: any bytes are a valid image; the reference is OpenCV's conversion.
    for enc in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2"):
        out.append(_case(enc, rng.integers(0, 256, (HEIGHT, WIDTH * 2), dtype=np.uint8), None))
    return out


def opencv_yuv(case: Case) -> np.ndarray:
    """OpenCV's RGB of a YUV 4:2:2 case (the reference the adapter matches)."""
    import cv2

    code = cv2.COLOR_YUV2RGB_UYVY if case.encoding in ("uyvy", "yuv422") else (
        cv2.COLOR_YUV2RGB_YUYV)
    rows = np.frombuffer(case.data, np.uint8).reshape(case.height, case.step)
    packed = np.ascontiguousarray(rows[:, : case.width * 2]).reshape(case.height, case.width, 2)
    return cv2.cvtColor(packed, code)
