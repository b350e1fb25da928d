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

"""guard_node: the guard on a robot's actuation path, as a ROS 2 lifecycle node.

Run it with ROS installed (colcon workspace) or where only the PyPI wheels exist::

    ros2 run guard_ros guard_node --ros-args --params-file guard_params.yaml
    python -m guard_ros.guard_node --ros-args -p config:=guard.yaml -p gate_cmd_vel:=true
    ros2 lifecycle set /guard_node deactivate        # it is a managed (lifecycle) node

Topics are relative and remappable: it subscribes `camera/image_raw` (sensor-data QoS),
`guard/proposals` and, with `gate_cmd_vel`, `cmd_vel_in` (parameter `cmd_vel_in_topic`);
it publishes `guard/decisions`, `guard/approved`, `/diagnostics` and, with the gate,
`cmd_vel` (`cmd_vel_out_topic`) and the latched `guard/gate_state`; it serves `guard/check`.
Every proposal gets exactly one decision; a check that could not run is a veto unless the
guard config says otherwise. See the package README for the parameter table.
"""

from __future__ import annotations

from collections import deque
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from guard.config import AuditConfig, load_config, PolicyConfig
from guard.core import Guard, unjudged
from guard.errors import ConfigError
from guard.types import Decision, Frame, Status, Verdict
from guard.wire import (
    header_stamp_ns,
    ns_to_seconds,
    ns_to_time,
    proposal_fields_from_msg,
    ProposalError,
    ros_message_to_rgb,
    seconds_to_ns,
)
from guard_interfaces.msg import ActionProposal as ActionProposalMsg
from guard_interfaces.msg import Decision as DecisionMsg
from guard_interfaces.msg import Hazard as HazardMsg
from guard_interfaces.srv import CheckAction
from guard_ros.conversions import percentile, verdict_code
from guard_ros.gate import Action, CmdVelGate, GatePolicy, GateState, inactive, Step
from guard_ros.params import (  # noqa: F401  (check_parameter & co. are imported from here)
    _RANGES,
    check_parameter,
    config_overrides,
    PARAMETERS,
    ParameterSpec,
)
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

NODE_NAME = 'guard_node'

# Threads: the executor's (main) thread runs every callback and only stores, relays or
# queues; model calls run on two threads of their own, one judging `guard/proposals` in
# arrival order and one serving `guard/check`, so camera frames, the cmd_vel gate and the
# lifecycle never wait for a model. A single-threaded executor, because rclpy's
# MultiThreadedExecutor hands every message to a pool thread and rebuilds its wait set
# around it: at 30 Hz camera + 20 Hz cmd_vel that cost the node over three times the CPU
# and, on a loaded machine, seconds of decision delay (README, Benchmark).

# Proposals wait in a queue while an earlier one is judged (one at a time, in order), bounded
# by `max_waiting_proposals`: one beyond it is answered at once with an audited veto. The DDS
# history is far deeper, so a burst that arrives while the executor is busy is never dropped
# silently by the middleware before the node has seen (and answered) each proposal.
PROPOSAL_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
CONTROL_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Latched: a late subscriber (an operator's `ros2 topic echo`) gets the current state at once.
GATE_STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Windows for the figures on /diagnostics.
_RATE_WINDOW_S = 10.0
_SPIN_TIMEOUT_S = 0.25
_TIMING_SAMPLES = 4096


class _CameraFrame:
    """One received camera message, turned into a `Frame` only when a check needs it.

    Converting (or JPEG-decoding) every frame would cost the camera callback milliseconds for
    images nobody judges; the message is kept instead and converted once, on first use. Its
    time is kept as the integer nanoseconds of the header (`stamp_ns`), which the decision
    gives back to ROS exactly; `stamp` is the same time in float seconds, for frame ages.
    """

    __slots__ = ('_error', '_frame', 'msg', 'stamp', 'stamp_ns')

    def __init__(self, msg: Image | CompressedImage, stamp_ns: int) -> None:
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
            except Exception as exc:  # the reason is kept: every check of it fails the same
                self._error = str(exc)
        if self._error is not None:
            raise ValueError(self._error)
        assert self._frame is not None
        return self._frame


def frame_time_ns(decision: Decision, entries: list[_CameraFrame]) -> int | None:
    """Return the judged frame's time in integer nanoseconds.

    The guard reports the newest frame's float `stamp` as it was given, so the camera message
    it came from is found by that value and its header time returned exactly; without one,
    the nanosecond nearest to `frame_stamp`. None when no frame was judged.
    """
    if decision.frame_stamp_ns is not None:
        return decision.frame_stamp_ns
    if decision.frame_stamp is None:
        return None
    for entry in reversed(entries):
        if entry.stamp == decision.frame_stamp:
            return entry.stamp_ns
    return seconds_to_ns(decision.frame_stamp)


def time_msg(ns: int | None) -> Time:
    """Return the `builtin_interfaces/Time` of `ns`: zero (unknown) for None or out of range."""
    sec, nanosec = ns_to_time(ns) if ns is not None else (0, 0)
    if not -(2**31) <= sec < 2**31:
        sec, nanosec = 0, 0
    return Time(sec=sec, nanosec=nanosec)


def _image_is_empty(image: Image) -> bool:
    # The CheckAction contract: an empty image asks for the latest camera frame.
    return image.width == 0 and image.height == 0 and len(image.data) == 0


class GuardNode(LifecycleNode):  # type: ignore[misc]  # rclpy ships no type information
    """The guard as a managed node: allocate on configure, serve when active.

    Unconfigured: parameters only. Configure: validates the parameters, builds the `Guard`
    (loads the model) and the publishers and timers. Activate: subscribes to the camera,
    proposals and cmd_vel_in and serves `guard/check`. Deactivate: stops taking input (the
    topics lose their subscriber, so a planner can see that nobody guards) and sends a last
    zero velocity. Cleanup: releases the model.
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        """Declare the parameters; nothing heavy happens before configure."""
        super().__init__(node_name, **kwargs)
        for name, spec in PARAMETERS.items():
            descriptor = ParameterDescriptor(
                description=spec.description, read_only=spec.read_only,
                dynamic_typing=isinstance(spec.default, float))
            if name in _RANGES:
                # Stated for `ros2 param describe`; check_parameter enforces it (rclpy's own
                # range check would refuse an int given for a float parameter).
                low, high = _RANGES[name]
                descriptor.additional_constraints = f'within [{low:g}, {high:g}]'
            self.declare_parameter(name, spec.default, descriptor)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._lock = threading.Lock()
        self._frames_lock = threading.Lock()
        # Held while a verdict is recorded and while a command is let through: once a veto is
        # recorded, no command judged open before it can still go out after its zero.
        self._gate_lock = threading.Lock()
        self._guard: Guard | None = None
        # Where a veto made without a guard is audited: the last config's log, else the default.
        self._audit_config: AuditConfig | None = None
        self._config_policy = PolicyConfig()  # the config file's, read on configure
        self._max_frames = 1
        self._max_input_pixels = 50_000_000
        self._gate_enabled = False
        self._active = False
        self._frames: deque[_CameraFrame] = deque(maxlen=4)
        self._zero_stamp_warned = False
        # The gate's decision (latest verdict, newest frame, the core's freshness rule).
        self._gate = CmdVelGate()
        self._stamped = False
        self._cmd_vel_frame_id = ''  # of the latest stamped command, for the zeros sent
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._decision_times: deque[float] = deque()
        self._last_latency_ms: float | None = None
        self._counts = {'frames': 0, 'proposals': 0, 'checks': 0, 'zero_cmd_vel': 0}
        self._camera_cb_ms: deque[float] = deque(maxlen=_TIMING_SAMPLES)
        self._camera_delay_ms: deque[float] = deque(maxlen=_TIMING_SAMPLES)

        # Judging threads (started on activate): proposals in order, and the check service.
        self._proposal_queue: queue.Queue[ActionProposalMsg | None] = queue.Queue()
        self._proposal_depth = int(PARAMETERS['max_waiting_proposals'].default)
        self._proposal_thread: threading.Thread | None = None
        self._check_server: _CheckServer | None = None

        self._decision_pub = None
        self._approved_pub = None
        self._cmd_vel_pub = None
        self._gate_state_pub = None
        self._diagnostics_pub = None
        self._watchdog_timer = None
        self._diagnostics_timer = None
        self._camera_sub = None
        self._proposal_sub = None
        self._cmd_vel_sub = None

    # -- parameters ------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return {name: self.get_parameter(name).value for name in PARAMETERS}

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        for param in params:
            if param.name not in PARAMETERS:
                continue
            reason = check_parameter(param.name, param.value)
            if reason is None and self._guard is not None and not PARAMETERS[param.name].live:
                reason = (f'{param.name} is read on configure: deactivate and clean up the '
                          'node, set it, then configure again')
            if reason is not None:
                self.get_logger().warning(f'parameter refused: {reason}')
                return SetParametersResult(successful=False, reason=reason)
        guard = self._guard
        if guard is None:  # read on configure
            return SetParametersResult(successful=True)
        # 0 / empty means "as the config file says", as on configure.
        changes = {}
        for param in params:
            if param.name == 'mode':
                changes['mode'] = param.value or self._config_policy.mode
            elif param.name in ('deadline_ms', 'max_frame_age_ms'):
                changes[param.name] = (float(param.value) if param.value
                                       else getattr(self._config_policy, param.name))
        if changes:
            try:
                guard.set_policy(**changes)
            except ConfigError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            self.get_logger().info('policy now: ' + ', '.join(
                f'{k} {v}' for k, v in changes.items()))
        return SetParametersResult(successful=True)

    # -- lifecycle -------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters, build the guard (loads the model), publishers, timers."""
        params = self._params()
        for name, value in params.items():
            reason = check_parameter(name, value)
            if reason is not None:
                self.get_logger().error(f'cannot configure: {reason}')
                return TransitionCallbackReturn.FAILURE
        try:
            base = load_config(params['config'] or None)
            overrides = config_overrides(params)
            config = base.with_overrides(**overrides) if overrides else base
            guard = Guard(config)
        except Exception as exc:  # a bad config or a model that does not load
            self.get_logger().error(f'cannot configure: {exc}')
            return TransitionCallbackReturn.FAILURE

        policy = config.policy
        self._audit_config = config.audit
        self._config_policy = base.policy
        self._max_frames = config.image.max_frames
        self._max_input_pixels = config.image.max_input_pixels
        self._gate_enabled = bool(params['gate_cmd_vel'])
        self._frames = deque(maxlen=max(params['frame_buffer'], self._max_frames))
        if params['frame_buffer'] < self._max_frames:
            self.get_logger().warning(
                f"frame_buffer ({params['frame_buffer']}) is below image.max_frames "
                f'({self._max_frames}): keeping {self._max_frames} frames')
        self._gate = CmdVelGate(float(params['stop_pub_timeout']))
        self._stamped = bool(params['enable_stamped_cmd_vel'])
        self._cmd_vel_frame_id = ''

        self._decision_pub = self.create_lifecycle_publisher(
            DecisionMsg, 'guard/decisions', PROPOSAL_QOS)
        self._approved_pub = self.create_lifecycle_publisher(
            ActionProposalMsg, 'guard/approved', PROPOSAL_QOS)
        if self._gate_enabled:
            self._cmd_vel_pub = self.create_lifecycle_publisher(
                TwistStamped if self._stamped else Twist, params['cmd_vel_out_topic'],
                CONTROL_QOS)
            # Not a lifecycle publisher: "stopped" must be readable while inactive too.
            self._gate_state_pub = self.create_publisher(
                String, 'guard/gate_state', GATE_STATE_QOS)
            self._publish_gate_state(inactive('configured, not active'))
            self._watchdog_timer = self.create_timer(
                params['watchdog_period_ms'] / 1000.0, self._on_watchdog)
        # Not a lifecycle publisher: an inactive guard should still say so on /diagnostics.
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, '/diagnostics', CONTROL_QOS)
        self._diagnostics_timer = self.create_timer(
            params['diagnostics_period_s'], self._on_diagnostics)
        with self._lock:
            self._guard = guard
        self.get_logger().info(
            f'configured: model {guard.backend.model_id}, mode {guard.mode}, deadline '
            f'{policy.deadline_ms:g} ms, max frame age {policy.max_frame_age_ms} ms, '
            f"image {params['image_format']}, cmd_vel gate "
            f"{'on' if self._gate_enabled else 'off'}"
            f"{' (TwistStamped)' if self._gate_enabled and self._stamped else ''}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the camera, proposals and cmd_vel_in; serve guard/check."""
        params = self._params()
        image_type = CompressedImage if params['image_format'] == 'compressed' else Image
        overridable = QoSOverridingOptions.with_default_policies()
        self._camera_sub = self.create_subscription(
            image_type, 'camera/image_raw', self._on_image, qos_profile_sensor_data,
            qos_overriding_options=overridable)
        self._proposal_queue = queue.Queue()
        self._proposal_thread = threading.Thread(
            target=self._judge_proposals, args=(self._proposal_queue,),
            name='guard-proposals', daemon=True)
        self._proposal_thread.start()
        proposals = self.create_subscription(
            ActionProposalMsg, 'guard/proposals', self._on_proposal, PROPOSAL_QOS,
            qos_overriding_options=overridable)
        self._proposal_depth = int(params['max_waiting_proposals'])
        self._proposal_sub = proposals
        if self._gate_enabled:
            self._cmd_vel_sub = self.create_subscription(
                TwistStamped if self._stamped else Twist, params['cmd_vel_in_topic'],
                self._on_cmd_vel, CONTROL_QOS, qos_overriding_options=overridable)
        self._check_server = _CheckServer(self)
        self._active = True
        result = super().on_activate(state)
        self.get_logger().info('active')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking input, finish what is being judged, send a last zero velocity."""
        self._active = False
        self._destroy_inputs()
        self._wait_idle()
        if self._cmd_vel_pub is not None:
            # The robot must not keep the last command it was given while nobody guards it.
            self._cmd_vel_pub.publish(self._zero_cmd_vel())
            self._publish_gate_state(inactive('deactivated: not guarding'))
        # Reactivated, the gate starts stopped again: no decision made before counts.
        self._gate.reset()
        self.get_logger().info('inactive')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model, publishers and timers."""
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything from whatever state the node is in."""
        self._active = False
        self._destroy_inputs()
        self._wait_idle()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything; the node goes back to unconfigured."""
        self._active = False
        self._destroy_inputs()
        self._release()
        return super().on_error(state)

    def release(self) -> None:
        """Stop and free everything (for process exit without a lifecycle transition)."""
        self._active = False
        self._destroy_inputs()
        self._release()

    def _destroy_inputs(self) -> None:
        for sub in (self._camera_sub, self._proposal_sub, self._cmd_vel_sub):
            if sub is not None:
                self.destroy_subscription(sub)
        self._camera_sub = self._proposal_sub = self._cmd_vel_sub = None
        server, self._check_server = self._check_server, None
        if server is not None:
            guard = self._guard
            deadline_s = guard.config.policy.deadline_ms / 1000.0 if guard else 0.0
            server.close(timeout=2.0 + deadline_s)
        # Proposals already received are still judged and answered (the sentinel queues
        # behind them); the publishers stay up until they are.
        thread, self._proposal_thread = self._proposal_thread, None
        if thread is not None:
            self._proposal_queue.put(None)

    def _wait_idle(self) -> None:
        # Proposals received still get their decisions out before the publishers stop.
        guard = self._guard
        per_check = 1.0 + (guard.config.policy.deadline_ms / 1000.0 if guard else 0.0)
        with self._idle:
            limit = per_check * max(1, self._inflight)
            self._idle.wait_for(lambda: self._inflight == 0, timeout=limit)

    def _release(self) -> None:
        for timer in (self._watchdog_timer, self._diagnostics_timer):
            if timer is not None:
                self.destroy_timer(timer)
        for pub in (self._decision_pub, self._approved_pub, self._cmd_vel_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        for plain in (self._diagnostics_pub, self._gate_state_pub):
            if plain is not None:
                self.destroy_publisher(plain)
        self._gate_state_pub = None
        self._watchdog_timer = self._diagnostics_timer = None
        self._decision_pub = self._approved_pub = self._cmd_vel_pub = None
        self._diagnostics_pub = None
        with self._lock:
            guard, self._guard = self._guard, None
        with self._frames_lock:
            self._frames.clear()
        if guard is not None:
            guard.close()

    # -- camera ----------------------------------------------------------------------------

    def _now(self) -> float:
        # The node clock: wall time, or the simulation / bag clock with use_sim_time.
        return float(self.get_clock().now().nanoseconds) * 1e-9

    def _now_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        # Only stores: conversion happens when a check needs the frame, never here.
        start = time.perf_counter()
        try:
            stamp_ns = header_stamp_ns(msg.header)
            if stamp_ns is None:
                # No capture time: the arrival time is the best bound there is.
                stamp_ns = self._now_ns()
                if not self._zero_stamp_warned:
                    self._zero_stamp_warned = True
                    self.get_logger().warning(
                        'camera frames have no header stamp: their age is measured from '
                        'arrival, which hides delays before it')
            elif not self._uses_sim_time():
                self._camera_delay_ms.append((time.time_ns() - stamp_ns) / 1e6)
            entry = _CameraFrame(msg, stamp_ns)
            with self._frames_lock:
                self._frames.append(entry)
            self._gate.on_frame(entry.stamp)
            self._counts['frames'] += 1
        except Exception as exc:  # a camera callback must never take the node down
            self.get_logger().error(f'camera frame dropped: {exc!r}', throttle_duration_sec=5.0)
        finally:
            self._camera_cb_ms.append((time.perf_counter() - start) * 1000.0)

    def _uses_sim_time(self) -> bool:
        return bool(self.get_parameter('use_sim_time').value)

    # -- judging ---------------------------------------------------------------------------

    def _on_proposal(self, msg: ActionProposalMsg) -> None:
        # Only queues (the executor's thread must stay free for the camera and the gate).
        self._counts['proposals'] += 1
        with self._lock:
            behind = self._inflight
            self._inflight += 1
        if behind < self._proposal_depth:
            self._proposal_queue.put(msg)
            return
        # Too far behind to judge this one in useful time: answered at once, and audited.
        try:
            self._answer(msg, self._veto(
                msg, Status.ERROR, f'not judged: {behind} proposals already wait for the '
                f'judge (queue depth {self._proposal_depth})'))
        finally:
            self._done_one()

    def _judge_proposals(self, proposals: queue.Queue[ActionProposalMsg | None]) -> None:
        # The proposal thread: one at a time, in arrival order, each answered exactly once.
        while (msg := proposals.get()) is not None:
            try:
                self._answer(msg, self._judge(msg, None))
            except Exception as exc:  # the thread must live on for the next proposal
                self.get_logger().error(f'publishing the decision failed: {exc!r}')
            finally:
                self._done_one()

    def _done_one(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def _veto(self, msg: ActionProposalMsg, status: Status, reason: str) -> Decision:
        """A fail-closed decision the node makes itself, audited by the guard when one exists."""
        guard = self._guard
        if guard is not None:
            try:
                # A mapping: the guard validates it, so even a nameless proposal is audited.
                return guard.reject({'id': msg.id, 'name': msg.name}, status, reason)
            except Exception as exc:  # the audit itself failed: still an answer, a veto
                reason = f'{reason}; not audited: {exc!r}'
        return unjudged(status, reason, audit=self._audit_config,
                        proposal={'id': msg.id, 'name': msg.name})

    def _on_check(self, request: Any, response: Any) -> Any:
        # Runs on the check server's own thread.
        with self._lock:
            self._inflight += 1
        try:
            image = None if _image_is_empty(request.image) else request.image
            decision = self._judge(request.proposal, image)
            self._counts['checks'] += 1
            self._record(decision)
            try:
                response.decision = self._decision_msg(request.proposal, decision)
            except Exception as exc:  # still an answer, and a veto
                self.get_logger().error(f'decision not convertible: {exc!r}')
                response.decision = self._decision_msg(request.proposal, self._veto(
                    request.proposal, Status.ERROR, f'internal error: {exc!r}'))
            return response
        finally:
            self._done_one()

    def _judge(self, msg: ActionProposalMsg, image: Image | None) -> Decision:
        """One decision for one proposal, whatever happens (fail closed)."""
        guard = self._guard
        if guard is None:
            return unjudged(Status.ERROR, 'the guard is not configured',
                            audit=self._audit_config, proposal={'id': msg.id, 'name': msg.name})
        try:
            stamp = ns_to_seconds(header_stamp_ns(msg.header))
            try:
                # The adapter replay reads proposals with; the guard then validates the
                # mapping (a blank name, arguments nested too deep: an audited invalid_input
                # veto), exactly as replay and the middleware do.
                proposal = proposal_fields_from_msg(msg, stamp=stamp)
            except ProposalError as exc:
                base = {'id': msg.id, 'name': msg.name, 'description': msg.description,
                        'stamp': stamp}
                return guard.reject(base, Status.INVALID_INPUT, str(exc))

            now_ns = self._now_ns()
            now = ns_to_seconds(now_ns)
            if image is not None:
                entries = [_CameraFrame(image, header_stamp_ns(image.header) or now_ns)]
                source = 'guard/check image'
            else:
                with self._frames_lock:
                    entries = list(self._frames)[-self._max_frames:]
                source = 'camera/image_raw'
            frames = []
            for entry in entries:
                try:
                    frames.append(entry.frame(self._max_input_pixels, source))
                except ValueError as exc:
                    decision = guard.reject(
                        proposal, Status.INVALID_INPUT, str(exc), frame_stamp=entry.stamp)
                    decision.frame_stamp_ns = entry.stamp_ns
                    return decision
            decision = guard.check(frames, proposal, now=now)
            decision.frame_stamp_ns = frame_time_ns(decision, entries)
            return decision
        except Exception as exc:  # a bug here must still answer, and answer veto
            self.get_logger().error(f'check failed unexpectedly: {exc!r}')
            return self._veto(msg, Status.ERROR, f'internal error: {exc!r}')

    def _answer(self, msg: ActionProposalMsg, decision: Decision) -> None:
        """Publish a proposal's decision, move the gate and relay the proposal if it may run."""
        try:
            out = self._decision_msg(msg, decision)
        except Exception as exc:
            self.get_logger().error(f'decision not convertible: {exc!r}')
            decision = self._veto(msg, Status.ERROR, f'internal error: {exc!r}')
            out = self._decision_msg(msg, decision)
        self._record(decision)
        with self._gate_lock:
            self._gate.on_decision(decision.verdict)
            if self._gate_enabled and self._active:
                # A veto stops the robot now, not at the next tick; an allow reports passing.
                self._gate_send(self._gate.on_tick(self._now(), self._gate_policy()), None)
        if self._decision_pub is not None:
            self._decision_pub.publish(out)
        # Shadow mode relays everything (nothing is blocked); enforce relays allow/annotate.
        if not decision.blocks and self._approved_pub is not None:
            self._approved_pub.publish(msg)
        if decision.verdict is Verdict.VETO:
            self.get_logger().info(
                f'veto {msg.id!r} ({decision.status.value}, {decision.mode}): '
                f'{decision.rationale[:200]}')

    def _record(self, decision: Decision) -> None:
        with self._lock:
            now = time.monotonic()
            self._decision_times.append(now)
            while self._decision_times and self._decision_times[0] < now - _RATE_WINDOW_S:
                self._decision_times.popleft()
            self._last_latency_ms = decision.latency_ms

    def _decision_msg(self, proposal: ActionProposalMsg, decision: Decision) -> DecisionMsg:
        out = DecisionMsg()
        out.header.stamp = self.get_clock().now().to_msg()
        out.header.frame_id = proposal.header.frame_id
        out.proposal_id = proposal.id
        out.verdict = verdict_code(decision.verdict)
        out.status = decision.status.value
        out.risk = float(decision.risk)
        out.hazards = [
            HazardMsg(category=h.category, description=h.description,
                      consequence=h.consequence, severity=float(h.severity))
            for h in decision.hazards
        ]
        out.rationale = decision.rationale
        out.latency_ms = float(decision.latency_ms)
        # The judged camera message's own header time, to the nanosecond.
        out.frame_stamp = time_msg(frame_time_ns(decision, []))
        out.model = decision.model
        # The audit record's own fields, so a decision on the bus joins its record by id.
        out.id = decision.id
        out.mode = decision.mode
        out.policy = decision.policy
        out.rules = list(decision.rules)
        out.error = decision.error or ''
        return out

    # -- cmd_vel gate ----------------------------------------------------------------------
    # What passes is CmdVelGate's decision alone (guard_ros/gate.py); the node only sends
    # what it answers.

    def _gate_policy(self) -> GatePolicy:
        guard = self._guard
        # Unconfigured there is no gate publisher; the defaults keep the answer a stop.
        return GatePolicy.of(guard.config.policy) if guard is not None else GatePolicy()

    def _on_cmd_vel(self, msg: Twist | TwistStamped) -> None:
        if not self._active or self._cmd_vel_pub is None:
            return
        if self._stamped:
            self._cmd_vel_frame_id = msg.header.frame_id
        with self._gate_lock:
            self._gate_send(self._gate.on_command(self._now(), self._gate_policy()), msg)

    def _on_watchdog(self) -> None:
        if not self._active or self._cmd_vel_pub is None:
            return
        with self._gate_lock:
            self._gate_send(self._gate.on_tick(self._now(), self._gate_policy()), None)

    def _zero_cmd_vel(self) -> Twist | TwistStamped:
        if not self._stamped:
            return Twist()
        zero = TwistStamped()
        zero.header.stamp = self.get_clock().now().to_msg()
        zero.header.frame_id = self._cmd_vel_frame_id
        return zero

    def _gate_send(self, step: Step, command: Twist | TwistStamped | None) -> None:
        """Send what the gate answered (the command, a zero, or nothing); report a change."""
        pub = self._cmd_vel_pub
        if pub is None:
            return
        try:
            if step.action is Action.PASS and command is not None:
                pub.publish(command)
            elif step.action is Action.ZERO:
                pub.publish(self._zero_cmd_vel())
                with self._lock:
                    self._counts['zero_cmd_vel'] += 1
        except Exception as exc:  # shutting down; a callback must not raise
            self.get_logger().warning(f'cmd_vel not sent: {exc!r}')
        if step.changed:
            self._publish_gate_state(step.state)
            if step.state.passing:
                self.get_logger().info('cmd_vel gate passing')
            else:
                self.get_logger().warning(
                    f'cmd_vel gate stopped ({step.state.reason.value}): {step.state.detail}')

    def _publish_gate_state(self, state: GateState) -> None:
        pub = self._gate_state_pub
        if pub is None:
            return
        try:
            pub.publish(String(data=state.to_json()))
        except Exception as exc:  # shutting down
            self.get_logger().warning(f'gate state not published: {exc!r}')

    # -- diagnostics -----------------------------------------------------------------------

    def diagnostics(self) -> DiagnosticStatus:
        """Return the guard's health as one DiagnosticStatus (as published on /diagnostics)."""
        guard = self._guard
        now = self._now()
        # The gate's view of the camera, by the same rule the checks are judged by.
        stale = guard is None or not self._gate.camera(
            now, GatePolicy.of(guard.config.policy)).fresh
        with self._lock:
            times = list(self._decision_times)
            latency = self._last_latency_ms
        recent = [t for t in times if t >= time.monotonic() - _RATE_WINDOW_S]
        stats = dict(guard.stats) if guard is not None else {}
        frame_age_ms = (now - self._frames[-1].stamp) * 1000.0 if self._frames else None
        cb = list(self._camera_cb_ms)
        delay = list(self._camera_delay_ms)
        values = {
            'model_loaded': guard is not None,
            'model': guard.backend.model_id if guard is not None else '',
            'mode': guard.mode if guard is not None else '',
            'deadline_ms': guard.config.policy.deadline_ms if guard is not None else None,
            'max_frame_age_ms': (guard.config.policy.max_frame_age_ms
                                 if guard is not None else None),
            'active': self._active,
            'last_latency_ms': latency,
            'decisions_per_s': len(recent) / _RATE_WINDOW_S,
            'decisions': stats.get('checks', 0),
            'vetoes': stats.get('vetoes', 0),
            'timeouts': stats.get('timeouts', 0),
            'errors': stats.get('errors', 0),
            'abandoned_model_calls': stats.get('abandoned', 0),
            'camera_stale': stale,
            'frame_age_ms': frame_age_ms,
            'frames_received': self._counts['frames'],
            'proposals_received': self._counts['proposals'],
            'checks_served': self._counts['checks'],
            'zero_cmd_vel_sent': self._counts['zero_cmd_vel'],
            'camera_callback_p50_ms': percentile(cb, 50),
            'camera_callback_p99_ms': percentile(cb, 99),
            'camera_callback_max_ms': max(cb) if cb else None,
            'camera_delay_p99_ms': percentile(delay, 99),
        }
        if guard is None:
            level, message = DiagnosticStatus.ERROR, 'model not loaded (unconfigured)'
        elif not self._active:
            level, message = DiagnosticStatus.WARN, 'inactive: not guarding'
        elif stale:
            level, message = DiagnosticStatus.WARN, (
                'camera stale' if self._frames else 'no camera frame yet')
        else:
            level, message = DiagnosticStatus.OK, f'guarding ({guard.mode})'
        return DiagnosticStatus(
            level=level, name=f'{self.get_name()}: guard', message=message,
            hardware_id=values['model'],
            values=[KeyValue(key=k, value=_fmt(v)) for k, v in values.items()])

    def _on_diagnostics(self) -> None:
        pub = self._diagnostics_pub
        if pub is None:
            return
        try:
            array = DiagnosticArray()
            array.header.stamp = self.get_clock().now().to_msg()
            array.status = [self.diagnostics()]
            pub.publish(array)
        except Exception as exc:  # e.g. racing a cleanup; the next period reports again
            self.get_logger().warning(
                f'diagnostics not published: {exc!r}', throttle_duration_sec=10.0)


class _CheckServer:
    """`guard/check` on a thread of its own, so a check waits for the model off the executor.

    rclpy runs a service callback on the thread of the executor its node is in, and a node
    is in one executor; the service therefore lives on a small helper node (`<name>_check`,
    no parameters) spun by its own single-threaded executor. The service name is resolved by
    the guard node, so its namespace and remappings apply exactly as they did before.
    """

    def __init__(self, owner: GuardNode) -> None:
        """Create the helper node and the service, and start serving."""
        name = owner.resolve_service_name('guard/check')
        self._node = rclpy.create_node(
            f'{owner.get_name()}_check', namespace=owner.get_namespace(),
            context=owner.context, use_global_arguments=False,
            start_parameter_services=False)
        self._node.create_service(CheckAction, name, owner._on_check)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name='guard-check', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self._node.context.ok():
            try:
                self._executor.spin_once(timeout_sec=_SPIN_TIMEOUT_S)
            except Exception:  # shutting down under it (context invalid): the same stop
                if self._stop.is_set() or not self._node.context.ok():
                    return
                raise

    def close(self, timeout: float) -> None:
        """Stop serving; a check in progress (bounded by its deadline) is answered first."""
        self._stop.set()
        self._thread.join(timeout)
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()


def _fmt(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        return f'{value:.3f}'
    return str(value)


def main(args: list[str] | None = None) -> int:
    """Run guard_node until shutdown (Ctrl-C, SIGTERM, or the context shutting down).

    Returns:
        0 on a clean shutdown, 1 when autostart could not configure or activate the node.
    """
    # The guard library logs through `logging`; without a handler its errors would vanish.
    logging.basicConfig(level=logging.WARNING, format='[%(levelname)s] [%(name)s]: %(message)s')
    rclpy.init(args=args)
    node = GuardNode()
    code = 0
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter('autostart').value:
            for step in (node.trigger_configure, node.trigger_activate):
                if step() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().fatal(
                        f'autostart failed at {step.__name__}: see the errors above')
                    code = 1
                    break
        # spin_once with a timeout rather than spin(): with use_sim_time and no /clock yet no
        # timer ever fires, and a shutdown whose wake-up is missed would block forever.
        while code == 0 and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=_SPIN_TIMEOUT_S)
            except Exception:
                # A SIGINT/SIGTERM can shut the context down between rclpy.ok() and the
                # executor building its wait set (RCLError: context not valid): a clean stop.
                if rclpy.ok():
                    raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.release()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    _exit_even_if_a_model_call_hangs(code)
    return code


def _exit_even_if_a_model_call_hangs(code: int) -> None:
    # A model call stuck in a driver keeps a non-daemon worker thread, and Python would wait
    # for it forever at exit; a node asked to stop must stop.
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if others:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == '__main__':
    sys.exit(main())
