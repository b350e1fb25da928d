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

The rule, as in nav2's collision_monitor ("an invalid source means stop"), decided here and
nowhere else: a command the base must not be given (a non-finite component, a stamp that is
not a valid time, stamped too far ahead of the node's clock or older than `max_frame_age_ms`:
`command_problem`) stops the robot, in shadow mode too, until a valid command arrives;
otherwise shadow mode passes everything; otherwise the latest decision being a veto, a node
clock that does not run yet (ROS time 0: use_sim_time before the first /clock), a missing,
stale or untrustworthy camera frame, or no decision yet at all stops the robot (the reason
reported is the first of those that holds). A check of the sources that itself fails is a
stop too, never a pass. (nav2 drops a non-finite command and sends nothing, so the base keeps
the previous one until its own timeout; here it is a stop, zero at once.)

What is sent while stopped is nav2's too: zero velocity on every command and watchdog tick
for at most `stop_pub_timeout` seconds after stopping, then nothing, so the base's own
command timeout (or a twist_mux below it) takes over rather than a stream of zeros forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import enum
import json
import math
import threading
from typing import Any

from guard.freshness import frame_freshness, Freshness
from guard.types import Status, Verdict

# nav2 collision_monitor's default for the same parameter.
DEFAULT_STOP_PUB_TIMEOUT_S = 2.0
# The components of a geometry_msgs/Twist, in the order `command_problem` is given them.
TWIST_FIELDS = ('linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z')


def clock_problem(now: float) -> str | None:
    """Why the node's clock (seconds) cannot age anything now; None when it can.

    ROS time 0 is rclpy's "not set yet": with use_sim_time, the time before the first /clock
    message. Every age measured against it is meaningless (a frame stamped on arrival would be
    0 s old forever), so nothing is fresh until the clock runs.
    """
    if not math.isfinite(now) or now <= 0.0:
        return (f"the node's clock reads {now!r}: with use_sim_time, no /clock message has "
                'arrived yet, so no frame or command can be shown to be recent')
    return None


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


class StopReason(str, enum.Enum):
    """Why the gate stops the robot (the `reason` of `guard/gate_state`)."""

    INVALID_COMMAND = 'invalid_command'
    VETO = 'veto'
    STALE_CAMERA = 'stale_camera'
    NO_DECISION_YET = 'no_decision_yet'


@dataclass(frozen=True)
class GateState:
    """Passing, or stopped with a reason (and the words behind it, for people).

    `active` False is the node's own state outside the lifecycle's active state: nothing is
    relayed and nothing is sent (the last command sent was a zero).
    """

    reason: StopReason | None = None
    detail: str = ''
    active: bool = True

    @property
    def passing(self) -> bool:
        """True when commands pass through unchanged."""
        return self.active and self.reason is None

    @property
    def name(self) -> str:
        """'passing', 'stopped' or 'inactive'."""
        if not self.active:
            return 'inactive'
        return 'passing' if self.reason is None else 'stopped'

    def to_json(self) -> str:
        """The `guard/gate_state` payload: {"state", "reason" ('' unless stopped), "detail"}."""
        return json.dumps({
            'state': self.name,
            'reason': self.reason.value if self.reason is not None and self.active else '',
            'detail': self.detail,
        }, sort_keys=True)


def inactive(detail: str) -> GateState:
    """The state published while the node does not guard (configured but not active)."""
    return GateState(None, detail, active=False)


PASSING = GateState()


class Action(str, enum.Enum):
    """What the node does with one command or one watchdog tick."""

    PASS = 'pass'    # relay the command as received
    ZERO = 'zero'    # send zero velocity instead
    QUIET = 'quiet'  # send nothing (stopped for longer than stop_pub_timeout; or a tick while
    #                  passing)


@dataclass(frozen=True)
class Step:
    """The gate's answer to one command or tick: what to send, and the state (new or not)."""

    action: Action
    state: GateState
    # True when the state (passing / stopped and its reason) differs from the last answer:
    # the moment to publish `guard/gate_state` and log.
    changed: bool


def command_problem(components: Sequence[float], stamp: float | None, now: float,
                    policy: GatePolicy) -> str | None:
    """Why a velocity command must not reach the base; None when it may (if the gate passes).

    Args:
        components: the Twist's six values, in `TWIST_FIELDS` order.
        stamp: a TwistStamped's header stamp in seconds (node clock); None for a plain Twist
            or a zero stamp (no time given, as diff_drive_controller also reads it).
        now: the node's clock in seconds.
        policy: the guard's policy: a stamp is held to the core's freshness rule, at most
            `max_clock_skew_ms` ahead (a command stamped ahead would never time out at a base
            that ages commands by their stamp) and at most `max_frame_age_ms` old (planned on
            a scene older than any frame the guard would judge).
    """
    bad = [f'{name} = {value!r}' for name, value in zip(TWIST_FIELDS, components, strict=True)
           if not math.isfinite(value)]
    if bad:
        return 'velocity command is not finite: ' + ', '.join(bad)
    if stamp is None or clock_problem(now) is not None:
        return None  # an unknown time, or a clock that cannot tell (the gate stops for that)
    fresh = frame_freshness(stamp, now, max_age_ms=policy.max_frame_age_ms,
                            max_skew_ms=policy.max_clock_skew_ms)
    if fresh.fresh:
        return None
    age_ms = fresh.age_ms if fresh.age_ms is not None else math.nan
    if age_ms < 0:
        return (f"velocity command is stamped {-age_ms:.0f} ms ahead of the node's clock, over "
                f'max_clock_skew_ms ({policy.max_clock_skew_ms:g})')
    return (f'velocity command is stamped {age_ms:.0f} ms ago, over max_frame_age_ms '
            f'({policy.max_frame_age_ms:g})')


class CmdVelGate:
    """Latest verdict and newest camera stamp, the state they give, and what to send.

    Thread-safe: the camera, the judging thread and the cmd_vel callbacks all feed it.
    """

    def __init__(self, stop_pub_timeout: float = DEFAULT_STOP_PUB_TIMEOUT_S) -> None:
        """Start stopped: no frame and no decision yet.

        Args:
            stop_pub_timeout: seconds (node clock) for which zeros are sent after stopping.
        """
        if not (math.isfinite(stop_pub_timeout) and stop_pub_timeout >= 0.0):
            raise ValueError(f'stop_pub_timeout = {stop_pub_timeout!r}: must be >= 0 seconds')
        self.stop_pub_timeout = float(stop_pub_timeout)
        self._lock = threading.Lock()
        self._newest_stamp: float | None = None
        self._has_frame = False
        self._last_verdict: Verdict | None = None
        self._stopped_since: float | None = None
        self._reported: tuple[bool, StopReason | None] | None = None
        # Why the newest frame's time cannot be trusted (no or an invalid header stamp).
        self._untrusted: str | None = None
        # Why the latest velocity command was refused (None: it was valid).
        self._refused: str | None = None

    def on_frame(self, stamp: float | None, untrusted: str | None = None) -> None:
        """Record the stamp (seconds, node clock) of the camera frame just received.

        Args:
            stamp: its time.
            untrusted: why its time cannot be trusted (then it is stale whatever `stamp` is).
        """
        with self._lock:
            self._newest_stamp = stamp
            self._has_frame = True
            self._untrusted = untrusted

    def on_decision(self, verdict: Verdict) -> None:
        """Record the verdict of a decision just published (a proposal's, not a service's)."""
        with self._lock:
            self._last_verdict = verdict

    def reset(self) -> None:
        """Forget frames, decisions and the stop (cleanup: the next configure starts stopped)."""
        with self._lock:
            self._newest_stamp = None
            self._has_frame = False
            self._last_verdict = None
            self._stopped_since = None
            self._reported = None
            self._untrusted = None
            self._refused = None

    @property
    def last_verdict(self) -> Verdict | None:
        """Return the verdict of the latest proposal decision, None before the first."""
        return self._last_verdict

    def camera(self, now: float, policy: GatePolicy) -> Freshness:
        """Judge the newest frame by the core's freshness rule (``status`` None: fresh)."""
        with self._lock:
            stamp, has_frame, untrusted = self._newest_stamp, self._has_frame, self._untrusted
        if has_frame and untrusted is not None:
            return Freshness(Status.STALE_FRAME, f'the newest frame {untrusted}')
        return frame_freshness(
            stamp, now, max_age_ms=policy.max_frame_age_ms,
            max_skew_ms=policy.max_clock_skew_ms, has_frame=has_frame)

    def state(self, now: float, policy: GatePolicy) -> GateState:
        """Return passing, or stopped and why (the rule in the module docstring).

        Args:
            now: the node's clock in seconds (the time base of the camera stamps).
            policy: the guard's policy as in force now.
        """
        try:
            refused = self._refused
            if refused is not None:
                return GateState(StopReason.INVALID_COMMAND, refused)
            if policy.mode == 'shadow':
                return PASSING
            if self._last_verdict is Verdict.VETO:
                return GateState(StopReason.VETO, 'latest decision is a veto')
            clock = clock_problem(now)
            if clock is not None:
                return GateState(StopReason.STALE_CAMERA, clock)
            fresh = self.camera(now, policy)
            if fresh.status is not None:
                if not self._has_frame:
                    return GateState(StopReason.STALE_CAMERA, 'no camera frame yet')
                return GateState(StopReason.STALE_CAMERA,
                                 f'camera {fresh.status.value}: {fresh.reason}')
            if self._last_verdict is None:
                return GateState(StopReason.NO_DECISION_YET, 'no proposal decided yet')
            return PASSING
        except Exception as exc:  # a source that cannot be checked is an invalid source
            return GateState(StopReason.STALE_CAMERA, f'camera check failed: {exc!r}')

    def blocked_reason(self, now: float, policy: GatePolicy) -> str | None:
        """Return why commands must be stopped now (in words), or None when they may pass."""
        state = self.state(now, policy)
        return None if state.passing else state.detail

    def on_command(self, now: float, policy: GatePolicy, refused: str | None = None) -> Step:
        """Answer a velocity command just received: pass it, send zero instead, or nothing.

        Args:
            now: the node's clock in seconds.
            policy: the guard's policy as in force now.
            refused: why this command must not reach the base (`command_problem`); the gate
                then stops, reason `invalid_command`, until a command without one arrives.
        """
        with self._lock:
            self._refused = refused
        return self._step(now, policy, command=True)

    def on_tick(self, now: float, policy: GatePolicy) -> Step:
        """Answer a watchdog tick (no command): zero while the stop is recent, else nothing."""
        return self._step(now, policy, command=False)

    def _step(self, now: float, policy: GatePolicy, *, command: bool) -> Step:
        state = self.state(now, policy)
        with self._lock:
            key = (state.passing, state.reason)
            changed, self._reported = key != self._reported, key
            if state.passing:
                self._stopped_since = None
                return Step(Action.PASS if command else Action.QUIET, state, changed)
            if (self._stopped_since is None or changed or not math.isfinite(now)
                    or now < self._stopped_since):
                # A new stop (or a new reason for it, or a clock that went back, as a bag
                # looping under use_sim_time does): the zeros start again from now.
                self._stopped_since = now
            if now - self._stopped_since <= self.stop_pub_timeout or not math.isfinite(now):
                return Step(Action.ZERO, state, changed)
            return Step(Action.QUIET, state, changed)
