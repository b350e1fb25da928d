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

"""The cmd_vel gate's decision, as a plain object: may a velocity command pass now?

No rclpy here: guard_node feeds it the camera stamps it receives and the decisions it
publishes, and asks it before relaying each command and on every watchdog tick. Whether the
camera is fresh is the core's one rule (`guard.freshness.frame_freshness`) with the guard's
own policy (`max_frame_age_ms`, `max_clock_skew_ms`), the same rule every check is judged by,
so the gate can never pass commands on a frame the judge would call stale (a frame stamped an
hour ahead of the clock, then a silent camera, used to keep the gate open for that hour).

The order, most restrictive first, as in nav2's collision_monitor ("an invalid source means
stop"): shadow mode passes everything; otherwise the latest decision being a veto, then a
missing, stale or untrustworthy camera frame, close the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
import threading
from typing import Any

from guard.freshness import frame_freshness, Freshness
from guard.types import Verdict


@dataclass(frozen=True)
class GatePolicy:
    """The policy fields the gate reads (a `PolicyConfig` has them all)."""

    mode: str = 'enforce'
    max_frame_age_ms: float | None = 1000.0
    max_clock_skew_ms: float = 100.0

    @classmethod
    def of(cls, policy: Any) -> GatePolicy:
        """Take the gate's fields from a guard `PolicyConfig` (or anything shaped like it)."""
        return cls(policy.mode, policy.max_frame_age_ms, policy.max_clock_skew_ms)


class CmdVelGate:
    """Latest verdict and newest camera stamp, and the one answer: blocked, and why.

    Thread-safe: the camera, the judging thread and the cmd_vel callbacks all feed it.
    """

    def __init__(self) -> None:
        """Start closed: no frame and no decision yet."""
        self._lock = threading.Lock()
        self._newest_stamp: float | None = None
        self._has_frame = False
        self._last_verdict: Verdict | None = None

    def on_frame(self, stamp: float | None) -> None:
        """Record the stamp (seconds, node clock) of the camera frame just received."""
        with self._lock:
            self._newest_stamp = stamp
            self._has_frame = True

    def on_decision(self, verdict: Verdict) -> None:
        """Record the verdict of a decision just published (a proposal's, not a service's)."""
        with self._lock:
            self._last_verdict = verdict

    def reset(self) -> None:
        """Forget frames and decisions (cleanup: the next configure starts closed)."""
        with self._lock:
            self._newest_stamp = None
            self._has_frame = False
            self._last_verdict = None

    @property
    def last_verdict(self) -> Verdict | None:
        """Return the verdict of the latest proposal decision, None before the first."""
        return self._last_verdict

    def camera(self, now: float, policy: GatePolicy) -> Freshness:
        """Judge the newest frame by the core's freshness rule (``status`` None: fresh)."""
        with self._lock:
            stamp, has_frame = self._newest_stamp, self._has_frame
        return frame_freshness(
            stamp, now, max_age_ms=policy.max_frame_age_ms,
            max_skew_ms=policy.max_clock_skew_ms, has_frame=has_frame)

    def blocked_reason(self, now: float, policy: GatePolicy) -> str | None:
        """Return why commands must be zeroed now, or None when they may pass.

        Args:
            now: the node's clock in seconds (the time base of the camera stamps).
            policy: the guard's policy as in force now.
        """
        if policy.mode == 'shadow':
            return None
        if self._last_verdict is Verdict.VETO:
            return 'latest decision is a veto'
        fresh = self.camera(now, policy)
        if fresh.status is None:
            return None
        if not self._has_frame:
            return 'no camera frame yet'
        return f'camera {fresh.status.value}: {fresh.reason}'
