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

"""guard_node's checks as a plain object: one decision per proposal, whatever happens.

No rclpy here (message classes only): `Judge` holds the node's `Guard` between configure and
cleanup and turns a `guard_interfaces/ActionProposal` (plus the newest camera frames, or the
image a `guard/check` call brought) into a `Decision`. Every failure is an audited veto
(fail closed): a bad proposal (or one whose header stamp is not a valid time) is
`invalid_input`, an image that cannot be decoded is `invalid_input`, a stamped proposal whose
frame did not come (`frames.paired`) or a frame whose time is untrusted (no or an invalid
header stamp: `frames.received`) is `stale_frame`, a node clock that does not run yet (ROS time
0: use_sim_time before the first /clock) is `error`, as the core's rule for a clock that
cannot tell time, and so are no guard and a bug.

The node's clock is read again once the frames are converted, and the check's deadline runs
from then too: converting (or decoding) a large frame takes real time, which must count
towards its age and the deadline rather than be hidden before the check.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import logging
import time
from typing import Any

from guard.config import AuditConfig, load_config, PolicyConfig
from guard.core import Guard, PolicySnapshot, unjudged
from guard.freshness import Freshness
from guard.types import Decision, Frame, Status
from guard.wire import ns_to_seconds, proposal_fields_from_msg, ProposalError
from guard_ros.frames import (
    CameraFrame,
    frame_time_ns,
    FrameBuffer,
    frames_for,
    header_stamp,
    InvalidStamp,
    paired,
    proposal_time,
    received,
)
from guard_ros.gate import clock_problem
from guard_ros.params import config_overrides

_log = logging.getLogger(__name__)
CAMERA_SOURCE = 'camera/image_raw'
SERVICE_SOURCE = 'guard/check image'


class Judge:
    """The node's guard and what it needs to judge: the config's limits and the frames."""

    def __init__(self, frames: FrameBuffer,
                 log_error: Callable[[str], None] = _log.error,
                 clock: Callable[[], int] | None = None) -> None:
        """Unconfigured: every check is an error veto until `configure`.

        Args:
            frames: the camera frames the node receives (newest last).
            log_error: where an unexpected failure is reported (the node's logger).
            clock: the node's clock in nanoseconds, read again after waiting for a frame
                (None: the time a check was given stands).
        """
        self.frames = frames
        self._log_error = log_error
        self._clock = clock
        # Set on configure, None otherwise; read through a local reference (one assignment).
        self.guard: Guard | None = None
        # Where a veto made without a guard is audited: the last config's log, else the default.
        self.audit_config: AuditConfig | None = None
        self.config_policy = PolicyConfig()  # the config file's own, before the parameters
        self.max_frames = 1
        self.max_input_pixels = 50_000_000
        self.frame_wait_ms = 0.0
        self.age_unstamped_from_arrival = False

    def configure(self, params: dict[str, Any]) -> Guard:
        """Build the guard from the node's parameters (loads the model).

        Raises:
            Exception: whatever the config loader or the backend raises; the node reports it
                and stays unconfigured.
        """
        base = load_config(params['config'] or None)
        overrides = config_overrides(params)
        config = base.with_overrides(**overrides) if overrides else base
        guard = Guard(config)
        self.audit_config, self.config_policy = config.audit, base.policy
        self.max_frames = config.image.max_frames
        self.max_input_pixels = config.image.max_input_pixels
        self.frame_wait_ms = float(params['frame_wait_ms'])
        self.age_unstamped_from_arrival = bool(
            params.get('age_unstamped_frames_from_arrival', False))
        self.guard = guard
        return guard

    def release(self) -> None:
        """Close the guard (its model and audit log); checks are error vetoes from now on."""
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.close()

    def veto(self, msg: Any, status: Status, reason: str) -> Decision:
        """A fail-closed decision the node makes itself, audited by the guard when one exists."""
        guard = self.guard
        proposal = {'id': msg.id, 'name': msg.name}
        if guard is not None:
            try:
                # A mapping: the guard validates it, so even a nameless proposal is audited.
                return guard.reject(proposal, status, reason)
            except Exception as exc:  # the audit itself failed (I/O, ...): still a veto
                reason = f'{reason}; not audited: {exc!r}'
        return unjudged(status, reason, audit=self.audit_config, proposal=proposal)

    def _camera_frames(self, policy: PolicySnapshot, stamp_ns: int | None,
                       now_ns: int) -> tuple[list[CameraFrame], int, Freshness]:
        """The camera frames for a proposal stamped `stamp_ns` (None: unstamped, the newest at
        once), the node's clock after any wait for them, and whether they may judge it: the
        rule of `guard_ros.frames` (replay's: the newest frame at or before the proposal)."""
        if stamp_ns is None:
            return self.frames.newest(self.max_frames), now_ns, Freshness(None)
        trusted = proposal_time(stamp_ns, now_ns, policy.config.max_clock_skew_ms)
        if not trusted.fresh:
            return self.frames.newest(self.max_frames), now_ns, trusted
        self.frames.wait_newest(stamp_ns, self.frame_wait_ms / 1000.0)
        if self._clock is not None:  # it may have waited: frames are aged from now
            now_ns = self._clock()
        kept, first_ns = self.frames.kept()
        arrived = paired(stamp_ns, kept, self.frame_wait_ms)
        if not arrived.fresh:
            return kept[-self.max_frames:], now_ns, arrived
        return frames_for(stamp_ns, kept, first_ns, self.max_frames), now_ns, arrived

    def judge(self, msg: Any, image: Any, now_ns: int) -> tuple[Decision, Frame | None]:
        """Judge one proposal: one decision, whatever happens (fail closed).

        Args:
            msg: the `guard_interfaces/ActionProposal`.
            image: a `sensor_msgs/Image` to judge, or None for the camera frames (the
                newest; for a stamped proposal, the newest at or before its stamp once the
                node has a frame at or after it: `guard_ros.frames`).
            now_ns: the node's clock (frames are aged against it).

        Returns:
            The decision, and the newest frame it judged (None when none was judged).
        """
        guard = self.guard
        if guard is None:
            return unjudged(Status.ERROR, 'the guard is not configured',
                            audit=self.audit_config,
                            proposal={'id': msg.id, 'name': msg.name}), None
        # One policy for the whole check, read as it starts: the clock-skew test below and
        # the guard's judgement (its thresholds, rules and audited fingerprint) both apply it,
        # even if a parameter changes while the proposal waits for its frame.
        policy = guard.policy
        reject = functools.partial(guard.reject, policy=policy)
        try:
            try:
                stamp_ns = header_stamp(msg.header)
            except InvalidStamp as exc:
                return reject({'id': msg.id, 'name': msg.name,
                               'description': msg.description},
                              Status.INVALID_INPUT, f'proposal {exc}'), None
            stamp = ns_to_seconds(stamp_ns)
            try:
                # The adapter replay reads proposals with; the guard then validates the
                # mapping (a blank name, arguments nested too deep: an audited invalid_input
                # veto), exactly as replay and the middleware do.
                proposal = proposal_fields_from_msg(msg, stamp=stamp)
            except ProposalError as exc:
                base = {'id': msg.id, 'name': msg.name, 'description': msg.description,
                        'stamp': stamp}
                return reject(base, Status.INVALID_INPUT, str(exc)), None
            clock = clock_problem(ns_to_seconds(now_ns))
            if clock is not None:
                return reject(proposal, Status.ERROR, clock), None
            if image is not None:
                entries = [received(image, now_ns, self.age_unstamped_from_arrival)]
                source = SERVICE_SOURCE
            else:
                entries, now_ns, pairing = self._camera_frames(policy, stamp_ns, now_ns)
                source = CAMERA_SOURCE
                if pairing.status is not None:  # the proposal's frame did not come
                    newest = entries[-1] if entries else None
                    decision = reject(
                        proposal, pairing.status, pairing.reason,
                        frame_stamp=newest.stamp if newest else None)
                    decision.frame_stamp_ns = newest.stamp_ns if newest else None
                    return decision, None
            untrusted = next((e for e in entries if e.untrusted is not None), None)
            if untrusted is not None:  # its age cannot be known: never fresh
                return reject(proposal, Status.STALE_FRAME,
                              f'the camera frame {untrusted.untrusted}'), None
            entered = time.monotonic()  # the deadline counts converting the frames
            frames = []
            for entry in entries:
                try:
                    frames.append(entry.frame(self.max_input_pixels, source))
                except ValueError as exc:
                    decision = reject(
                        proposal, Status.INVALID_INPUT, str(exc), frame_stamp=entry.stamp)
                    decision.frame_stamp_ns = entry.stamp_ns
                    return decision, None
            if self._clock is not None and frames:  # converting took time: age from now
                now_ns = self._clock()
                clock = clock_problem(ns_to_seconds(now_ns))
                if clock is not None:
                    return reject(proposal, Status.ERROR, clock), None
            decision = guard.check(frames, proposal, now=ns_to_seconds(now_ns), entered=entered,
                                   policy=policy)
            decision.frame_stamp_ns = frame_time_ns(decision, entries)
            judged = [f for f in frames if f.stamp_ns == decision.frame_stamp_ns]
            return decision, (judged[-1] if judged else None)
        except Exception as exc:  # a bug here must still answer, and answer veto
            self._log_error(f'check failed unexpectedly: {exc!r}')
            return self.veto(msg, Status.ERROR, f'internal error: {exc!r}'), None
