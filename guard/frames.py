"""Frame sources: where a guarded tool gets "what the camera sees right now".

A frame source is any callable that takes no arguments and returns a `Frame`, a sequence of
frames (oldest first), or None when there is no frame yet (the guard then answers
`status=no_frame`, a veto unless the policy says otherwise). Async tools may use an async
callable. Ready-made sources:

    StaticFrame.from_path("examples/kitchen_towel_on_stove.jpg")   # a fixed picture, stamped now
    ImageDirectory("/tmp/snapshots")               # the newest image file a camera dropped there
    ImageFile("/tmp/snapshot.jpg")                  # one file a camera keeps overwriting
    OpenCVCapture(0)                                # a webcam / RTSP URL / video file via OpenCV
    RosImageTopic("camera/image_raw")               # a ROS 2 image topic (needs rclpy)

Each stamps its frames on the wall clock (`time.time()`), the clock the guard measures frame
age against in the middleware; a source that stops delivering makes its last frame stale, so
the guard vetoes with `status=stale_frame` instead of judging an old view.

ROS messages are converted by `guard.wire` (`ros_image_to_rgb`, `ros_compressed_to_rgb`, kept
importable from here), the one adapter the node and `guard replay` use as well.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from guard.errors import InvalidInputError, UsageError
from guard.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_INPUT_PIXELS
from guard.types import Frame
from guard.wire import (
    InvalidStamp,
    header_stamp_ns,
    ns_to_seconds,
    ros_compressed_to_rgb,
    ros_image_to_rgb,
)

FrameResult = Frame | Sequence[Frame] | None
FrameSource = Callable[[], FrameResult] | Callable[[], Awaitable[FrameResult]]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    return np.ascontiguousarray(image[:, :, 2::-1])


class StaticFrame:
    """A camera that always shows the same picture; each call stamps it "now".

    For demos and tests: the frame is never stale. Do not use it to guard a real robot.
    """

    def __init__(self, image: np.ndarray, source: str = "static") -> None:
        self._frame = Frame(image=image, stamp=0.0, source=source)

    @classmethod
    def from_path(cls, path: str | Path) -> StaticFrame:
        return cls(Frame.from_path(path).image, source=str(path))

    def __call__(self) -> Frame:
        return self._frame.model_copy(update={"stamp": time.time()})


class ImageDirectory:
    """Frames from image files in a folder.

    Args:
        path: The folder.
        mode: "latest": the newest file (by modification time) at each call, stamped with its
            modification time, for a camera or simulator that drops snapshots into a folder
            (a file that stops being replaced becomes a stale frame). "sequence": the files in
            name order, one per call, stamped now, to play back a recorded sequence.
        loop: In "sequence" mode, start again after the last file (else return None).
        suffixes: File name endings that count as images.
        max_input_pixels: Refuse larger images before decoding them.
        max_file_bytes: Refuse larger files.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mode: Literal["latest", "sequence"] = "latest",
        loop: bool = False,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
        max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UsageError(f"ImageDirectory: {self.path} is not a folder")
        if mode not in ("latest", "sequence"):
            raise UsageError(f"ImageDirectory: mode must be 'latest' or 'sequence', got {mode!r}")
        self.mode, self.loop = mode, loop
        self.suffixes = tuple(s.lower() for s in suffixes)
        self._limits = {"max_input_pixels": max_input_pixels, "max_file_bytes": max_file_bytes}
        self._next = 0
        self._lock = threading.Lock()

    def _files(self) -> list[Path]:
        return sorted(
            p for p in self.path.iterdir() if p.suffix.lower() in self.suffixes and p.is_file()
        )

    def __call__(self) -> Frame | None:
        files = self._files()
        if not files:
            return None
        if self.mode == "latest":
            # A file can vanish between listing and stat (a camera replacing it): skip those.
            stamped = []
            for p in files:
                try:
                    stamped.append((p.stat().st_mtime, p))
                except FileNotFoundError:
                    continue
            if not stamped:
                return None
            mtime, newest = max(stamped)
            return Frame.from_path(newest, stamp=mtime, **self._limits)
        with self._lock:
            if self._next >= len(files):
                if not self.loop:
                    return None
                self._next = 0
            path = files[self._next]
            self._next += 1
        return Frame.from_path(path, stamp=time.time(), **self._limits)


class ImageFile:
    """The current contents of one image file, stamped with its modification time.

    For a camera or simulator that keeps overwriting one snapshot file: each call decodes the
    file as it is now, so a file that stops being replaced becomes a stale frame (as
    `ImageDirectory` in "latest" mode does for a folder). A file that is missing at a call is
    no frame (None); one that does not decode raises `InvalidInputError`, which the guard
    turns into an `invalid_input` veto.

    Args:
        path: The image file.
        max_input_pixels: Refuse larger images before decoding them.
        max_file_bytes: Refuse larger files.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"ImageFile: {self.path} is not a file")
        self._limits = {"max_input_pixels": max_input_pixels, "max_file_bytes": max_file_bytes}

    def __call__(self) -> Frame | None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:  # being replaced right now, or gone: no frame this time
            return None
        return Frame.from_path(self.path, stamp=mtime, **self._limits)


def frame_source_from_path(path: str | Path) -> ImageDirectory | ImageFile:
    """The frame source a command line's image path names: a folder gives its newest image
    file at each call (`ImageDirectory`, "latest"), a file its current contents (`ImageFile`);
    both are stamped with the file's modification time.

    Raises:
        UsageError: `path` is neither an existing folder nor an existing file.
    """
    p = Path(path)
    if p.is_dir():
        return ImageDirectory(p)
    if p.is_file():
        return ImageFile(p)
    raise UsageError(f"{p}: no such image file or folder")


class OpenCVCapture:
    """Frames from an OpenCV `VideoCapture`: a webcam index, a stream URL or a video file.

    With `threaded=True` (the default, for live cameras) a background thread keeps reading so
    that each call returns the newest frame, stamped when it was read; a bare `read()` would
    return whatever old frame sits in the driver's buffer. With `threaded=False` each call
    reads the next frame itself (video files, tests).

    Args:
        source: Device index, URL or file path, as `cv2.VideoCapture` takes it.
        capture: An already opened capture (or any object with `read()` and `release()`, such
            as a test double); `source` is then ignored.
        threaded: Read in a background thread and hand out the newest frame.
        props: `cv2.CAP_PROP_*` values to set, e.g. `{cv2.CAP_PROP_FRAME_WIDTH: 640}`.
        max_failures: Consecutive failed reads after which the reader thread stops (end of a
            file, unplugged camera); its last frame then goes stale.
    """

    def __init__(
        self,
        source: int | str = 0,
        *,
        capture: Any = None,
        threaded: bool = True,
        props: dict[int, float] | None = None,
        max_failures: int = 50,
    ) -> None:
        if capture is None:
            from guard._deps import require

            cv2 = require("cv2", "OpenCVCapture")
            capture = cv2.VideoCapture(source)
            for prop, value in (props or {}).items():
                capture.set(prop, value)
        opened = getattr(capture, "isOpened", None)
        if opened is not None and not opened():
            raise UsageError(f"OpenCVCapture: cannot open video source {source!r}")
        self.source = str(source)
        self._capture = capture
        self._max_failures = max_failures
        self._latest: Frame | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        if threaded:
            self._thread = threading.Thread(
                target=self._run, name=f"guard-capture-{self.source}", daemon=True
            )
            self._thread.start()

    def _read(self) -> Frame | None:
        ok, image = self._capture.read()
        if not ok or image is None:
            return None
        return Frame(image=_bgr_to_rgb(np.asarray(image)), stamp=time.time(), source=self.source)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                frame = self._read()
            except Exception as exc:  # a driver error ends reading; the frame then goes stale
                self.error = f"{type(exc).__name__}: {exc}"
                return
            if frame is None:
                failures += 1
                if failures >= self._max_failures:
                    self.error = f"{failures} failed reads in a row"
                    return
                self._stop.wait(0.01)
                continue
            failures = 0
            with self._lock:
                self._latest = frame

    def __call__(self) -> Frame | None:
        if self._thread is None:
            return self._read()
        with self._lock:
            return self._latest

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._capture.release()

    def __enter__(self) -> OpenCVCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RosImageTopic:
    """The newest frame of a ROS 2 image topic (`sensor_msgs/Image` or `CompressedImage`).

    Needs rclpy (`pip install 'embodied-guard[ros]'` or a sourced ROS 2 install); it is imported
    only when this class is used. Messages are kept as they arrive and converted only when a
    frame is asked for, so a 30 Hz camera costs nothing between tool calls.

    Args:
        topic: The image topic (relative names follow the node's namespace).
        compressed: Subscribe to `CompressedImage`; None: when the topic ends in "/compressed".
        node: An existing node to subscribe with; you spin it. None: a private node spun on a
            background thread.
        context: The rclpy context (None: the global one, initialised here if needed).
        qos: QoS profile; None: sensor-data QoS (best effort, as cameras publish).
        stamp: "receive" stamps a frame with the wall-clock time it arrived, which works
            under simulated time too; "header" uses the message's header stamp (needs the
            camera's clock to be this machine's wall clock).
    """

    def __init__(
        self,
        topic: str = "camera/image_raw",
        *,
        compressed: bool | None = None,
        node: Any = None,
        context: Any = None,
        qos: Any = None,
        stamp: Literal["receive", "header"] = "receive",
    ) -> None:
        from guard._deps import require

        rclpy = require("rclpy", "RosImageTopic")
        if stamp not in ("receive", "header"):
            raise UsageError(f"RosImageTopic: stamp must be 'receive' or 'header', got {stamp!r}")
        if compressed is None:
            compressed = topic.rstrip("/").endswith("/compressed")
        if compressed:
            from sensor_msgs.msg import CompressedImage as msg_type
        else:
            from sensor_msgs.msg import Image as msg_type
        if qos is None:
            from rclpy.qos import qos_profile_sensor_data

            qos = qos_profile_sensor_data
        self.topic, self.compressed, self.stamp_mode = topic, compressed, stamp
        self._rclpy = rclpy
        self._lock = threading.Lock()
        self._latest: tuple[Any, float] | None = None
        self._owns_init = False
        self._executor = None
        self._thread: threading.Thread | None = None
        self._context = context
        if node is None:
            if not rclpy.ok(context=context):
                rclpy.init(context=context)
                self._owns_init = True
            node = rclpy.create_node(
                f"guard_frames_{uuid.uuid4().hex[:8]}", context=context
            )
            from rclpy.executors import SingleThreadedExecutor

            self._executor = SingleThreadedExecutor(context=context)
            self._executor.add_node(node)
            self._owns_node = True
        else:
            self._owns_node = False
        self.node = node
        self._subscription = node.create_subscription(msg_type, topic, self._on_image, qos)
        if self._executor is not None:
            self._thread = threading.Thread(
                target=self._spin, name=f"guard-ros-frames-{topic}", daemon=True
            )
            self._thread.start()

    def _spin(self) -> None:
        assert self._executor is not None
        try:
            self._executor.spin()
        except Exception:  # shutdown races end the spin; the frame then goes stale
            pass

    def _on_image(self, msg: Any) -> None:
        with self._lock:
            self._latest = (msg, time.time())

    def __call__(self) -> Frame | None:
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        msg, received = latest
        stamp = received
        if self.stamp_mode == "header":
            try:
                header = ns_to_seconds(header_stamp_ns(getattr(msg, "header", None)))
            except InvalidStamp as exc:  # never aged as some other, fresher time
                raise InvalidInputError(f"{self.topic}: {exc}") from None
            stamp = received if header is None else header
        convert = ros_compressed_to_rgb if self.compressed else ros_image_to_rgb
        return Frame(image=convert(msg, source=self.topic), stamp=stamp, source=self.topic)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=1.0)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._owns_node:
            self.node.destroy_node()
        else:
            self.node.destroy_subscription(self._subscription)
        if self._owns_init:
            self._rclpy.shutdown(context=self._context)

    def __enter__(self) -> RosImageTopic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "FrameResult",
    "FrameSource",
    "ImageDirectory",
    "ImageFile",
    "OpenCVCapture",
    "RosImageTopic",
    "StaticFrame",
    "frame_source_from_path",
    "ros_compressed_to_rgb",
    "ros_image_to_rgb",
]
