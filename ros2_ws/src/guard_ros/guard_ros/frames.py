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

"""The camera side of guard_node as plain objects: received frames, the frame a proposal is
judged on, and the judged frame's time.

No rclpy here: the node hands each camera message (any object with a `header`) to
`FrameBuffer.add`, and a check asks for the newest ones. Unit-tested without a graph.

Pairing a proposal with a frame (`proposal_time`, `FrameBuffer.wait_newest`, `paired`,
`frames_for`): the camera (best effort, large messages) and the proposals (reliable, small) are
separate topics, so a proposal can arrive before the frame it was made on, and the node judged
it on the frame before (the last scene, not this one). A proposal with a `header.stamp` says
when it was made (by ROS convention for derived data, the stamp of the frame it was planned
on) and is judged by replay's rule (`guard replay`: the newest frame at or before the
proposal's time), in header stamps:

1. Its stamp must be trusted by the core's freshness rule (`guard.freshness`): at most
   `policy.max_clock_skew_ms` ahead of the node's clock; else the clocks disagree and the
   proposal is a `stale_frame` veto at once.
2. The node waits, at most `frame_wait_ms`, until it has a frame stamped at or after the
   proposal. A camera topic arrives in order, so from then on every frame stamped before the
   proposal that will ever arrive has arrived. None by then (frames, but all older) is a
   `stale_frame` veto: the frame the proposal was made on may be on its way still.
3. It is judged on the newest `image.max_frames` frames stamped at or before it: the frame it
   was made on. None such (the camera's first frame came after the proposal) is the core's
   `no_frame`, as in replay. When the node no longer holds that frame (the proposal waited
   for the judge longer than `frame_buffer` frames last), the nearest kept after it.

An unstamped proposal is judged on the newest frames at hand, as before: nothing says which
frame it belongs to.

A frame's time (`header_stamp`, `received`): its header stamp, when that is a valid ROS time.
A frame without one (zero: many drivers leave it unset) or with an invalid one (nanosec at or
above 1e9, or negative seconds: no ROS clock reads that) is kept, stamped on arrival for its
order, but its time is untrusted: every check of it is a `stale_frame` veto and the gate stops,
since nothing bounds how old the picture is (a driver re-sending a cached image with a zero
stamp would look new forever). `age_unstamped_frames_from_arrival` takes a zero stamp as the
arrival time instead, for drivers that cannot be fixed.
"""

from __future__ import annotations

from collections import deque
import threading
from typing import Any

from guard.freshness import frame_freshness, Freshness
from guard.types import Decision, Frame, Status
from guard.wire import ns_to_seconds, ros_message_to_rgb, seconds_to_ns
from guard.wire.stamps import header_stamp_ns, InvalidStamp


def header_stamp(header: Any) -> int | None:
    """The integer nanoseconds of a `std_msgs/Header` stamp; None when it is zero (not given).

    The wire layer's rule, shared with replay and the middleware's ROS camera source.

    Raises:
        InvalidStamp: not a valid ROS time (nanosec at or above 1e9, negative seconds).
    """
    return header_stamp_ns(header)


class CameraFrame:
    """One received camera message, turned into a `Frame` only when a check needs it.

    Converting (or JPEG-decoding) every frame would cost the camera callback milliseconds for
    images nobody judges; the message is kept instead and converted once, on first use. Its
    time is kept as the integer nanoseconds of the header (`stamp_ns`), which the decision
    gives back to ROS exactly; `stamp` is the same time in float seconds, for frame ages.
    """

    __slots__ = ('_error', '_frame', 'msg', 'stamp', 'stamp_ns', 'untrusted')

    def __init__(self, msg: Any, stamp_ns: int, untrusted: str | None = None) -> None:
        """Keep `msg` (sensor_msgs Image or CompressedImage) stamped `stamp_ns`.

        Args:
            msg: the camera message.
            stamp_ns: its time (node clock, integer nanoseconds).
            untrusted: why that time cannot be trusted (no or an invalid header stamp:
                `stamp_ns` is then only the arrival time); every check of it is stale.
        """
        self.msg = msg
        self.stamp_ns = stamp_ns
        self.stamp = ns_to_seconds(stamp_ns)
        self.untrusted = untrusted
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


UNSTAMPED = ('has no header stamp (zero), so its age cannot be known; stamp frames at '
             'capture, or set age_unstamped_frames_from_arrival')


def received(msg: Any, arrival_ns: int, age_unstamped_from_arrival: bool) -> CameraFrame:
    """The `CameraFrame` of a camera message that arrived at `arrival_ns` (node clock): timed
    by its header stamp, or untrusted (module docstring) when the stamp is zero or invalid."""
    try:
        stamp_ns = header_stamp(getattr(msg, 'header', None))
    except InvalidStamp as exc:
        return CameraFrame(msg, arrival_ns, str(exc))
    if stamp_ns is not None:
        return CameraFrame(msg, stamp_ns)
    if age_unstamped_from_arrival:
        return CameraFrame(msg, arrival_ns)
    return CameraFrame(msg, arrival_ns, UNSTAMPED)


class FrameBuffer:
    """The newest camera frames (newest last), shared by the camera callback and the checks."""

    def __init__(self, size: int = 4) -> None:
        """Keep at most `size` frames."""
        # A condition: a check waiting for its proposal's frame wakes when one is added.
        self._lock = threading.Condition()
        self._frames: deque[CameraFrame] = deque(maxlen=size)
        # The first frame's stamp since the last clear: did any frame come before a time?
        self._first_ns: int | None = None

    def resize(self, size: int) -> None:
        """Keep at most `size` frames from now on (the newest are kept)."""
        with self._lock:
            self._frames = deque(self._frames, maxlen=size)

    def add(self, entry: CameraFrame) -> None:
        """Store a frame just received."""
        with self._lock:
            self._frames.append(entry)
            if self._first_ns is None:
                self._first_ns = entry.stamp_ns
            self._lock.notify_all()

    def wait_newest(self, stamp_ns: int, timeout_s: float) -> bool:
        """Wait until the newest frame is stamped at or after `stamp_ns`, at most `timeout_s`
        seconds (wall time); True when it is."""
        with self._lock:
            return self._lock.wait_for(
                lambda: bool(self._frames) and self._frames[-1].stamp_ns >= stamp_ns,
                timeout=max(0.0, timeout_s))

    def newest(self, n: int) -> list[CameraFrame]:
        """Return the newest `n` frames, oldest first (fewer when fewer arrived)."""
        with self._lock:
            return list(self._frames)[-n:] if n > 0 else []

    def kept(self) -> tuple[list[CameraFrame], int | None]:
        """Return every frame kept (oldest first) and the first frame's stamp since `clear`."""
        with self._lock:
            return list(self._frames), self._first_ns

    def newest_stamp(self) -> float | None:
        """Return the newest frame's stamp in seconds, None before the first frame."""
        with self._lock:
            return self._frames[-1].stamp if self._frames else None

    def clear(self) -> None:
        """Forget every frame (cleanup)."""
        with self._lock:
            self._frames.clear()
            self._first_ns = None


def proposal_time(stamp_ns: int, now_ns: int, max_skew_ms: float) -> Freshness:
    """May a proposal stamped `stamp_ns` be paired with frames (rule 1 of the module
    docstring)? The core's freshness rule with no age limit (the judged frame's own age is the
    core's to check): a stamp more than `max_skew_ms` ahead of the node's clock `now_ns` is a
    `stale_frame` veto."""
    fresh = frame_freshness(ns_to_seconds(stamp_ns), ns_to_seconds(now_ns), max_age_ms=None,
                            max_skew_ms=max_skew_ms)
    if fresh.fresh:
        return fresh
    ahead = -(fresh.age_ms or 0.0)
    return Freshness(
        fresh.status,
        f"the proposal is stamped {ahead:.0f} ms ahead of the node's clock, over "
        f"max_clock_skew_ms ({max_skew_ms:g}): the clocks disagree, so no camera frame can "
        'be paired with it', fresh.age_ms)


def paired(stamp_ns: int, kept: list[CameraFrame], wait_ms: float) -> Freshness:
    """Has every frame up to a proposal stamped `stamp_ns` arrived (rule 2)? Yes once the
    newest kept frame is stamped at or after it (exact integer nanoseconds), and when no frame
    arrived at all (the core's `no_frame` rule then decides); else a `stale_frame` veto."""
    if not kept or kept[-1].stamp_ns >= stamp_ns:
        return Freshness(None)
    behind_ms = (stamp_ns - kept[-1].stamp_ns) / 1e6
    return Freshness(
        Status.STALE_FRAME,
        'no camera frame stamped at or after the proposal arrived within frame_wait_ms '
        f'({wait_ms:g}), so the frame it was made on may not have arrived; the newest is '
        f'{behind_ms:.0f} ms older than the proposal', behind_ms)


def frames_for(stamp_ns: int, kept: list[CameraFrame], first_ns: int | None,
               n: int) -> list[CameraFrame]:
    """The frames a proposal stamped `stamp_ns` is judged on (rule 3), from the frames kept
    (oldest first) once `paired`: the newest `n` stamped at or before it; none when the first
    frame ever received (`first_ns`) came after it; the oldest `n` kept when its own were
    dropped from the buffer."""
    if n <= 0:
        return []
    before = [f for f in kept if f.stamp_ns <= stamp_ns]
    if before:
        return before[-n:]
    if first_ns is None or first_ns > stamp_ns:
        return []
    return kept[:n]


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
