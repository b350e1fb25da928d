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

"""guard_node's health as a plain object: counters, timing windows and the status they give.

No rclpy here: the node feeds it what happens (frames, proposals, decisions, zeros sent) and
turns `GuardDiagnostics.report` into the `diagnostic_msgs/DiagnosticStatus` it publishes on
/diagnostics once per `diagnostics_period_s`. The keys of `Report.values` are the published
KeyValue keys (operators' dashboards and the node tests read them): keep their names.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
import enum
import threading
import time
from typing import Any

from guard_ros.conversions import percentile

# Decisions per second are counted over this window.
RATE_WINDOW_S = 10.0
# Camera callback times and delays kept for their percentiles.
TIMING_SAMPLES = 4096
COUNTERS = ('frames', 'proposals', 'checks', 'zero_cmd_vel')


class Level(enum.IntEnum):
    """`diagnostic_msgs/DiagnosticStatus` levels (the message stores them as one byte)."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class GuardView:
    """What the node knows of its guard when it reports (None fields: unconfigured)."""

    active: bool
    model: str | None = None  # None: no guard (unconfigured)
    mode: str = ''
    deadline_ms: float | None = None
    max_frame_age_ms: float | None = None
    stats: Mapping[str, int] = field(default_factory=dict)
    # The gate's view of the camera (the core's freshness rule), and the newest frame's age.
    camera_fresh: bool = False
    has_frame: bool = False
    frame_age_ms: float | None = None

    @classmethod
    def of(cls, guard: Any, *, active: bool, camera_fresh: bool, newest_stamp: float | None,
           now: float) -> GuardView:
        """Take the view from a `Guard` (None: unconfigured) and the node's camera state.

        Args:
            guard: the node's guard, or None.
            active: whether the node is in the lifecycle's active state.
            camera_fresh: whether the newest frame passes the core's freshness rule.
            newest_stamp: the newest frame's stamp (seconds, node clock), None before one.
            now: the node's clock in seconds.
        """
        age = (now - newest_stamp) * 1000.0 if newest_stamp is not None else None
        if guard is None:
            return cls(active=active, has_frame=newest_stamp is not None, frame_age_ms=age)
        policy = guard.config.policy
        return cls(active=active, model=guard.backend.model_id, mode=guard.mode,
                   deadline_ms=policy.deadline_ms, max_frame_age_ms=policy.max_frame_age_ms,
                   stats=dict(guard.stats), camera_fresh=camera_fresh,
                   has_frame=newest_stamp is not None, frame_age_ms=age)


@dataclass(frozen=True)
class Report:
    """One status: its level, a message for people, and the figures as strings."""

    level: Level
    message: str
    values: dict[str, str]


class GuardDiagnostics:
    """Counters and timing windows of one node, fed from several threads.

    Thread-safe: the camera callback, the judging threads and the diagnostics timer all use it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 rate_window_s: float = RATE_WINDOW_S,
                 timing_samples: int = TIMING_SAMPLES) -> None:
        """Start with every counter at zero.

        Args:
            clock: monotonic seconds, for the decision rate (a test passes its own).
            rate_window_s: window of `decisions_per_s`.
            timing_samples: camera callback times (and delays) kept for their percentiles.
        """
        self._clock = clock
        self._window = rate_window_s
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._decision_times: deque[float] = deque()
        self._last_latency_ms: float | None = None
        self._camera_cb_ms: deque[float] = deque(maxlen=timing_samples)
        self._camera_delay_ms: deque[float] = deque(maxlen=timing_samples)

    def count(self, name: str) -> None:
        """Add one to a counter: 'frames', 'proposals', 'checks' or 'zero_cmd_vel'."""
        if name not in self._counts:
            raise KeyError(f'unknown counter {name!r} (one of {", ".join(COUNTERS)})')
        with self._lock:
            self._counts[name] += 1

    def camera_callback(self, callback_ms: float, delay_ms: float | None = None) -> None:
        """Record one camera callback: its own time and (wall-clock stamps only) the delay
        from the frame's stamp to its arrival."""
        with self._lock:
            self._camera_cb_ms.append(callback_ms)
            if delay_ms is not None:
                self._camera_delay_ms.append(delay_ms)

    def decided(self, latency_ms: float) -> None:
        """Record a decision made (a proposal's or a service check's) and its latency."""
        with self._lock:
            now = self._clock()
            self._decision_times.append(now)
            while self._decision_times and self._decision_times[0] < now - self._window:
                self._decision_times.popleft()
            self._last_latency_ms = latency_ms

    def values(self, view: GuardView) -> dict[str, Any]:
        """Return the figures as values (None: not known), keyed as published."""
        with self._lock:
            now = self._clock()
            recent = sum(1 for t in self._decision_times if t >= now - self._window)
            latency = self._last_latency_ms
            counts = dict(self._counts)
            cb = list(self._camera_cb_ms)
            delay = list(self._camera_delay_ms)
        stats = view.stats
        return {
            'model_loaded': view.model is not None,
            'model': view.model or '',
            'mode': view.mode,
            'deadline_ms': view.deadline_ms,
            'max_frame_age_ms': view.max_frame_age_ms,
            'active': view.active,
            'last_latency_ms': latency,
            'decisions_per_s': recent / self._window,
            'decisions': stats.get('checks', 0),
            'vetoes': stats.get('vetoes', 0),
            'timeouts': stats.get('timeouts', 0),
            'errors': stats.get('errors', 0),
            'abandoned_model_calls': stats.get('abandoned', 0),
            'camera_stale': not view.camera_fresh,
            'frame_age_ms': view.frame_age_ms,
            'frames_received': counts['frames'],
            'proposals_received': counts['proposals'],
            'checks_served': counts['checks'],
            'zero_cmd_vel_sent': counts['zero_cmd_vel'],
            'camera_callback_p50_ms': percentile(cb, 50),
            'camera_callback_p99_ms': percentile(cb, 99),
            'camera_callback_max_ms': max(cb) if cb else None,
            'camera_delay_p99_ms': percentile(delay, 99),
        }

    def report(self, view: GuardView) -> Report:
        """Return the status: ERROR unconfigured, WARN inactive or camera stale, else OK."""
        if view.model is None:
            level, message = Level.ERROR, 'model not loaded (unconfigured)'
        elif not view.active:
            level, message = Level.WARN, 'inactive: not guarding'
        elif not view.camera_fresh:
            level, message = Level.WARN, (
                'camera stale' if view.has_frame else 'no camera frame yet')
        else:
            level, message = Level.OK, f'guarding ({view.mode})'
        values = {key: fmt(value) for key, value in self.values(view).items()}
        return Report(level, message, values)


def fmt(value: Any) -> str:
    """Format a value for a KeyValue: '' for unknown, lower-case bools, 3-decimal floats."""
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        return f'{value:.3f}'
    return str(value)
