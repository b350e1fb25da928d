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

"""The camera side of guard_node as plain objects: received frames and the judged frame's time.

No rclpy here: the node hands each camera message (any object with a `header`) to
`FrameBuffer.add`, and a check asks for the newest ones. Unit-tested without a graph.
"""

from __future__ import annotations

from collections import deque
import threading
from typing import Any

from guard.types import Decision, Frame
from guard.wire import ns_to_seconds, ros_message_to_rgb, seconds_to_ns


class CameraFrame:
    """One received camera message, turned into a `Frame` only when a check needs it.

    Converting (or JPEG-decoding) every frame would cost the camera callback milliseconds for
    images nobody judges; the message is kept instead and converted once, on first use. Its
    time is kept as the integer nanoseconds of the header (`stamp_ns`), which the decision
    gives back to ROS exactly; `stamp` is the same time in float seconds, for frame ages.
    """

    __slots__ = ('_error', '_frame', 'msg', 'stamp', 'stamp_ns')

    def __init__(self, msg: Any, stamp_ns: int) -> None:
        """Keep `msg` (sensor_msgs Image or CompressedImage) stamped `stamp_ns`."""
        self.msg = msg
        self.stamp_ns = stamp_ns
        self.stamp = ns_to_seconds(stamp_ns)
        self._frame: Frame | None = None
        self._error: str | None = None

    def frame(self, max_input_pixels: int, source: str) -> Frame:
        """Return the RGB frame; raise ValueError (with the reason) if it cannot be converted."""
        if self._frame is None and self._error is None:
            try:
                self._frame = Frame(
                    image=ros_message_to_rgb(
                        self.msg, source=source, max_input_pixels=max_input_pixels),
                    stamp=self.stamp, stamp_ns=self.stamp_ns, source=source)
            except Exception as exc:  # any decoder failure: kept, every check of it fails alike
                self._error = str(exc)
        if self._error is not None:
            raise ValueError(self._error)
        assert self._frame is not None
        return self._frame


class FrameBuffer:
    """The newest camera frames (newest last), shared by the camera callback and the checks."""

    def __init__(self, size: int = 4) -> None:
        """Keep at most `size` frames."""
        self._lock = threading.Lock()
        self._frames: deque[CameraFrame] = deque(maxlen=size)

    def resize(self, size: int) -> None:
        """Keep at most `size` frames from now on (the newest are kept)."""
        with self._lock:
            self._frames = deque(self._frames, maxlen=size)

    def add(self, entry: CameraFrame) -> None:
        """Store a frame just received."""
        with self._lock:
            self._frames.append(entry)

    def newest(self, n: int) -> list[CameraFrame]:
        """Return the newest `n` frames, oldest first (fewer when fewer arrived)."""
        with self._lock:
            return list(self._frames)[-n:] if n > 0 else []

    def newest_stamp(self) -> float | None:
        """Return the newest frame's stamp in seconds, None before the first frame."""
        with self._lock:
            return self._frames[-1].stamp if self._frames else None

    def clear(self) -> None:
        """Forget every frame (cleanup)."""
        with self._lock:
            self._frames.clear()


def frame_time_ns(decision: Decision, entries: list[CameraFrame]) -> int | None:
    """Return the judged frame's time in integer nanoseconds.

    The guard reports the newest frame's float `stamp` as it was given, so the camera message
    it came from is found by that value and its header time returned exactly; without one,
    the nanosecond nearest to `frame_stamp`. None when no frame was judged.
    """
    if decision.frame_stamp_ns is not None:
        return int(decision.frame_stamp_ns)
    if decision.frame_stamp is None:
        return None
    for entry in reversed(entries):
        if entry.stamp == decision.frame_stamp:
            return int(entry.stamp_ns)
    ns: int | None = seconds_to_ns(decision.frame_stamp)
    return ns
