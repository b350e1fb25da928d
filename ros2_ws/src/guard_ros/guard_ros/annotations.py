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

"""Live Foxglove annotations: each decision drawn over the camera frame it judged.

The annotations are built by the code `guard replay --write-mcap` uses
(`guard.replay.foxglove.frame_annotations` and `to_message`), so the live view and a replayed
file look the same: an outline of the frame in the colour of the most restrictive verdict on
it, and one line per decision (verdict, risk, first hazard). `to_message` builds messages from
whatever classes it is given under their ROS type names: the rclpy classes of `foxglove_msgs`
here, rosbags' classes in replay (and in the unit tests, which need no ROS package).
No rclpy here.
"""

from __future__ import annotations

from typing import Any

from guard.replay.foxglove import FOXGLOVE_MSGS, frame_annotations, to_message
from guard.types import Decision, Frame

# Decisions drawn over one frame at most (the newest): a planner proposing many actions on
# one frame would otherwise cover the image with text.
MAX_DECISIONS_PER_FRAME = 4


class RosTypes:
    """The `foxglove_msgs` (and `builtin_interfaces/Time`) rclpy classes by ROS type name."""

    def __init__(self) -> None:
        """Import the classes.

        Raises:
            ImportError: no `foxglove_msgs` package (ROS: `ros-$ROS_DISTRO-foxglove-msgs`;
                PyPI wheels only: `bash ros2_ws/build_interfaces.sh` builds it).
        """
        from builtin_interfaces.msg import Time
        import foxglove_msgs.msg as foxglove

        self.types: dict[str, Any] = {'builtin_interfaces/msg/Time': Time}
        for name in FOXGLOVE_MSGS:
            self.types[name] = getattr(foxglove, name.rsplit('/', 1)[1])


class Annotator:
    """The `ImageAnnotations` of the frame each decision judged, with the decisions before it
    on the same frame."""

    def __init__(self, types: Any) -> None:
        """Build messages from `types` (`RosTypes()`, or a rosbags typestore)."""
        self._types = types
        self._stamp_ns: int | None = None
        self._decisions: list[Decision] = []

    def on_decision(self, decision: Decision, frame: Frame | None) -> Any | None:
        """Return the annotations of `frame` with `decision` on it; None when no frame (or
        one without its header stamp) was judged: there is nothing to draw over."""
        if frame is None or frame.stamp_ns is None:
            return None
        if frame.stamp_ns != self._stamp_ns:
            self._stamp_ns, self._decisions = frame.stamp_ns, []
        self._decisions = [*self._decisions, decision][-MAX_DECISIONS_PER_FRAME:]
        height, width = frame.image.shape[:2]
        data = frame_annotations(self._decisions, frame.stamp_ns, width, height)
        return to_message(self._types, data)
