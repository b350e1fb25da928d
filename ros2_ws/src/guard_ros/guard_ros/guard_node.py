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

The node is a thin shell: what passes the gate is `gate.CmdVelGate`'s, the parameters are
`params`', frames `frames`', the proposal queue `pending`'s, health `diagnostics`', outgoing
messages `messages`'; each is a plain object or function tested without a ROS graph.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from guard.errors import ConfigError
from guard.types import Decision, Frame, Status, Verdict
from guard.wire import header_stamp_ns, ns_to_seconds
from guard_interfaces.msg import ActionProposal as ActionProposalMsg
from guard_interfaces.msg import Decision as DecisionMsg
from guard_ros.annotations import Annotator, RosTypes
from guard_ros.check_server import CheckServer
from guard_ros.diagnostics import GuardDiagnostics, GuardView
from guard_ros.frames import FrameBuffer, received
from guard_ros.gate import CmdVelGate, GatePolicy, inactive, Step
from guard_ros.judging import Judge
from guard_ros.messages import decision_msg
from guard_ros.params import _RANGES, check_parameter, PARAMETERS, policy_changes
from guard_ros.pending import Pending
from guard_ros.process import run
from guard_ros.relay import GateRelay
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
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

# The DDS history of proposals is far deeper than `max_waiting_proposals`, so a burst that
# arrives while the executor is busy is never dropped by the middleware before the node has
# seen (and answered) each proposal.
PROPOSAL_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
CONTROL_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Latched: a late subscriber (an operator's `ros2 topic echo`) gets the current state at once.
GATE_STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
# rosidl setters refuse a value their field cannot hold with these.
_UNCONVERTIBLE = (AssertionError, OverflowError, TypeError, ValueError)


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

        self._active = False
        self._frames = FrameBuffer()
        self._judge = Judge(self._frames, self.get_logger().error, self._now_ns)
        self._zero_stamp_warned = False
        self._diag = GuardDiagnostics()
        self._gate_enabled = False
        self._relay = self._new_relay(CmdVelGate(), stamped=False)
        self._annotator: Annotator | None = None
        self._pending: Pending[ActionProposalMsg] = Pending()
        self._proposal_thread: threading.Thread | None = None
        self._check_server: CheckServer | None = None
        self._pubs: dict[str, Any] = {}  # name -> publisher (lifecycle ones: decisions & co.)
        self._timers: list[Any] = []
        self._subs: list[Any] = []

    # -- parameters ------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return {name: self.get_parameter(name).value for name in PARAMETERS}

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        guard = self._judge.guard
        for param in params:
            reason = check_parameter(param.name, param.value)
            spec = PARAMETERS.get(param.name)
            if reason is None and spec is not None and guard is not None and not spec.live:
                reason = (f'{param.name} is read on configure: deactivate and clean up the '
                          'node, set it, then configure again')
            if reason is not None:
                self.get_logger().warning(f'parameter refused: {reason}')
                return SetParametersResult(successful=False, reason=reason)
        if guard is None:  # read on configure
            return SetParametersResult(successful=True)
        changes = policy_changes({p.name: p.value for p in params}, self._judge.config_policy)
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
        reasons = [r for r in (check_parameter(k, v) for k, v in params.items()) if r]
        if reasons:
            self.get_logger().error(f'cannot configure: {reasons[0]}')
            return TransitionCallbackReturn.FAILURE
        try:
            types = RosTypes() if params['publish_annotations'] else None
        except ImportError as exc:
            self.get_logger().error(
                f'cannot configure: publish_annotations needs the foxglove_msgs package ({exc});'
                ' install ros-$ROS_DISTRO-foxglove-msgs, or run ros2_ws/build_interfaces.sh')
            return TransitionCallbackReturn.FAILURE
        try:
            guard = self._judge.configure(params)
        except Exception as exc:  # a bad config, or any backend's error loading its model
            self.get_logger().error(f'cannot configure: {exc}')
            return TransitionCallbackReturn.FAILURE
        policy, max_frames = guard.config.policy, self._judge.max_frames
        self._frames.resize(max(params['frame_buffer'], max_frames))
        if params['frame_buffer'] < max_frames:
            self.get_logger().warning(
                f"frame_buffer ({params['frame_buffer']}) is below image.max_frames "
                f'({max_frames}): keeping {max_frames} frames')
        self._gate_enabled = bool(params['gate_cmd_vel'])
        stamped = bool(params['enable_stamped_cmd_vel'])
        self._relay = self._new_relay(CmdVelGate(float(params['stop_pub_timeout'])), stamped)

        lifecycle = self.create_lifecycle_publisher
        self._pubs['decisions'] = lifecycle(DecisionMsg, 'guard/decisions', PROPOSAL_QOS)
        self._pubs['approved'] = lifecycle(ActionProposalMsg, 'guard/approved', PROPOSAL_QOS)
        self._annotator = Annotator(types) if types is not None else None
        if types is not None:
            self._pubs['annotations'] = lifecycle(
                types.types['foxglove_msgs/msg/ImageAnnotations'], 'guard/annotations',
                CONTROL_QOS)
        if self._gate_enabled:
            self._pubs['cmd_vel'] = lifecycle(
                TwistStamped if stamped else Twist, params['cmd_vel_out_topic'], CONTROL_QOS)
            # Not a lifecycle publisher: "stopped" must be readable while inactive too.
            self._pubs['gate_state'] = self.create_publisher(
                String, 'guard/gate_state', GATE_STATE_QOS)
            self._relay.publish_state(inactive('configured, not active'))
            # Timers on the steady clock, not the node's: with use_sim_time and no /clock (or
            # a paused one) a node-clock timer never fires, and the gate would neither report
            # its state nor re-send zeros, nor /diagnostics say why.
            self._timers.append(self.create_timer(
                params['watchdog_period_ms'] / 1000.0, self._on_watchdog,
                clock=Clock(clock_type=ClockType.STEADY_TIME)))
        # Not a lifecycle publisher: an inactive guard should still say so on /diagnostics.
        self._pubs['diagnostics'] = self.create_publisher(
            DiagnosticArray, '/diagnostics', CONTROL_QOS)
        self._timers.append(self.create_timer(
            params['diagnostics_period_s'], self._on_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME)))
        self.get_logger().info(
            f'configured: model {guard.backend.model_id}, mode {guard.mode}, deadline '
            f'{policy.deadline_ms:g} ms, max frame age {policy.max_frame_age_ms} ms, '
            f"image {params['image_format']}, cmd_vel gate "
            f"{'on' if self._gate_enabled else 'off'}"
            f"{' (TwistStamped)' if self._gate_enabled and stamped else ''}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the camera, proposals and cmd_vel_in; serve guard/check."""
        params = self._params()
        overridable = QoSOverridingOptions.with_default_policies()
        self._subs.append(self.create_subscription(
            *self._camera_topic(params['image_format']), self._on_image,
            qos_profile_sensor_data, qos_overriding_options=overridable))
        proposals = self._pending.reopen(int(params['max_waiting_proposals']))
        self._proposal_thread = threading.Thread(
            target=self._judge_proposals, args=(proposals,), name='guard-proposals',
            daemon=True)
        self._proposal_thread.start()
        self._subs.append(self.create_subscription(
            ActionProposalMsg, 'guard/proposals', self._on_proposal, PROPOSAL_QOS,
            qos_overriding_options=overridable))
        if self._gate_enabled:
            self._subs.append(self.create_subscription(
                TwistStamped if self._relay.stamped else Twist, params['cmd_vel_in_topic'],
                self._on_cmd_vel, CONTROL_QOS, qos_overriding_options=overridable))
        self._check_server = CheckServer(self, self._on_check)
        self._active = True
        result = super().on_activate(state)
        self.get_logger().info('active')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking input, finish what is being judged, send a last zero velocity."""
        self._stop_inputs(wait=True)
        if 'cmd_vel' in self._pubs:
            # The robot must not keep the last command it was given while nobody guards it.
            self._publish('cmd_vel', self._relay.zero())
            self._relay.publish_state(inactive('deactivated: not guarding'))
        # Reactivated, the gate starts stopped again: no decision made before counts.
        self._relay.gate.reset()
        self.get_logger().info('inactive')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model, publishers and timers."""
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything from whatever state the node is in."""
        self._stop_inputs(wait=True)
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything; the node goes back to unconfigured."""
        self.release()
        return super().on_error(state)

    def release(self) -> None:
        """Stop and free everything (for process exit without a lifecycle transition)."""
        self._stop_inputs(wait=False)
        self._release()

    def _stop_inputs(self, wait: bool) -> None:
        self._active = False
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        guard = self._judge.guard
        deadline_s = guard.config.policy.deadline_ms / 1000.0 if guard is not None else 0.0
        # A stamped proposal may first wait for its frame (none comes once unsubscribed).
        deadline_s += self._judge.frame_wait_ms / 1000.0
        server, self._check_server = self._check_server, None
        if server is not None:
            server.close(timeout=2.0 + deadline_s)
        # Proposals already received are still judged and answered (the stop marker queues
        # behind them); the publishers stay up until they are.
        thread, self._proposal_thread = self._proposal_thread, None
        if thread is not None:
            self._pending.close()
        if wait:
            self._pending.wait_idle(per_check_s=1.0 + deadline_s)

    def _release(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        for name, pub in self._pubs.items():
            if name in ('diagnostics', 'gate_state'):
                self.destroy_publisher(pub)
            else:
                self.destroy_lifecycle_publisher(pub)
        self._pubs, self._annotator = {}, None
        self._judge.release()
        self._frames.clear()

    def _publish(self, name: str, msg: Any) -> None:
        pub = self._pubs.get(name)
        if pub is None:
            return
        try:
            pub.publish(msg)
        except RuntimeError as exc:  # rclpy's InvalidHandle/RCLError: racing a cleanup
            self.get_logger().warning(f'{name} not published: {exc!r}',
                                      throttle_duration_sec=5.0)

    # -- camera ----------------------------------------------------------------------------

    def _now_ns(self) -> int:
        # The node clock: wall time, or the simulation / bag clock with use_sim_time.
        return int(self.get_clock().now().nanoseconds)

    def _now(self) -> float:
        return float(ns_to_seconds(self._now_ns()))

    def _camera_topic(self, image_format: str) -> tuple[type, str]:
        if image_format != 'compressed':
            return Image, 'camera/image_raw'
        # image_transport's naming: its compressed transport publishes on the base topic
        # (namespaced and remapped first, so `camera/image_raw:=/cam` moves both) plus
        # '/compressed'.
        return CompressedImage, self.resolve_topic_name('camera/image_raw') + '/compressed'

    def _on_image(self, msg: Image | CompressedImage) -> None:
        # Only stores: conversion happens when a check needs the frame, never here.
        start = time.perf_counter()
        entry = received(msg, self._now_ns(), self._judge.age_unstamped_from_arrival)
        delay_ms = None
        if entry.untrusted is not None:
            self.get_logger().warning(
                f'camera frame not trusted (every check of it is a stale_frame veto): it '
                f'{entry.untrusted}', throttle_duration_sec=10.0)
        elif not self._zero_stamp_warned and header_stamp_ns(msg.header) is None:
            self._zero_stamp_warned = True  # age_unstamped_frames_from_arrival is on
            self.get_logger().warning(
                'camera frames have no header stamp: their age is measured from arrival, '
                'which hides delays before it (age_unstamped_frames_from_arrival)')
        elif not self.get_parameter('use_sim_time').value:
            delay_ms = (time.time_ns() - entry.stamp_ns) / 1e6
        self._frames.add(entry)
        self._relay.gate.on_frame(entry.stamp, entry.untrusted)
        self._diag.count('frames')
        self._diag.camera_callback((time.perf_counter() - start) * 1000.0, delay_ms)

    # -- judging ---------------------------------------------------------------------------

    def _on_proposal(self, msg: ActionProposalMsg) -> None:
        # Only queues (the executor's thread must stay free for the camera and the gate).
        self._diag.count('proposals')
        behind = self._pending.offer(msg)
        if behind is None:
            return
        # Too far behind to judge this one in useful time: answered at once, and audited.
        try:
            self._answer(msg, self._judge.veto(
                msg, Status.ERROR, f'not judged: {behind} proposals already wait for the '
                f'judge (queue depth {self._pending.depth})'))
        finally:
            self._pending.done()

    def _judge_proposals(self, proposals: Any) -> None:
        # The proposal thread: one at a time, in arrival order, each answered exactly once.
        while (msg := proposals.get()) is not None:
            try:
                self._answer(msg, *self._judge.judge(msg, None, self._now_ns()))
            except Exception as exc:  # the thread must live on: later proposals need it
                self.get_logger().error(f'publishing the decision failed: {exc!r}')
            finally:
                self._pending.done()

    def _on_check(self, request: Any, response: Any) -> Any:
        # Runs on the check server's own thread.
        self._pending.begin()
        try:
            image = request.image
            if image.width == 0 and image.height == 0 and len(image.data) == 0:
                image = None  # the CheckAction contract: empty asks for the latest frame
            decision, response.decision = self._to_msg(
                request.proposal, self._judge.judge(request.proposal, image, self._now_ns())[0])
            self._diag.count('checks')
            self._diag.decided(decision.latency_ms)
            return response
        finally:
            self._pending.done()

    def _to_msg(self, proposal: ActionProposalMsg,
                decision: Decision) -> tuple[Decision, DecisionMsg]:
        """The decision and its message; a veto instead when the message cannot hold it."""
        try:
            return decision, decision_msg(proposal, decision, self.get_clock().now().to_msg())
        except _UNCONVERTIBLE as exc:
            self.get_logger().error(f'decision not convertible: {exc!r}')
            decision = self._judge.veto(proposal, Status.ERROR, f'internal error: {exc!r}')
            return decision, decision_msg(proposal, decision, self.get_clock().now().to_msg())

    def _answer(self, msg: ActionProposalMsg, decision: Decision,
                frame: Frame | None = None) -> None:
        """Publish a proposal's decision (and its annotations over `frame`, the one judged),
        move the gate, and relay the proposal if it may run."""
        decision, out = self._to_msg(msg, decision)
        self._diag.decided(decision.latency_ms)
        # A veto stops the robot now, not at the next tick; an allow reports passing.
        self._log_gate(self._relay.on_decision(
            decision.verdict, send=self._gate_enabled and self._active))
        self._publish('decisions', out)
        annotator = self._annotator
        if annotator is not None:
            annotations = annotator.on_decision(decision, frame)
            if annotations is not None:
                self._publish('annotations', annotations)
        # Shadow mode relays everything (nothing is blocked); enforce relays allow/annotate.
        if not decision.blocks:
            self._publish('approved', msg)
        if decision.verdict is Verdict.VETO:
            self.get_logger().info(
                f'veto {msg.id!r} ({decision.status.value}, {decision.mode}): '
                f'{decision.rationale[:200]}')

    # -- cmd_vel gate: what passes is CmdVelGate's decision, GateRelay sends it -------------

    def _new_relay(self, gate: CmdVelGate, stamped: bool) -> GateRelay:
        return GateRelay(gate, self._publish, self._now_ns, self._gate_policy, stamped,
                         on_zero=lambda: self._diag.count('zero_cmd_vel'))

    def _gate_policy(self) -> GatePolicy:
        guard = self._judge.guard
        # Unconfigured there is no gate publisher; the defaults keep the answer a stop.
        return GatePolicy.of(guard.config.policy) if guard is not None else GatePolicy()

    def _on_cmd_vel(self, msg: Twist | TwistStamped) -> None:
        if self._active:
            self._log_gate(self._relay.on_command(msg))

    def _on_watchdog(self) -> None:
        if self._active:
            self._log_gate(self._relay.on_tick())

    def _log_gate(self, step: Step | None) -> None:
        if step is None or not step.changed:
            return
        if step.state.passing:
            self.get_logger().info('cmd_vel gate passing')
        else:
            reason = step.state.reason.value if step.state.reason is not None else ''
            self.get_logger().warning(f'cmd_vel gate stopped ({reason}): {step.state.detail}')

    # -- diagnostics -----------------------------------------------------------------------

    def _on_diagnostics(self) -> None:
        guard, now = self._judge.guard, self._now()
        # The gate's view of the camera, by the rule the checks are judged by.
        fresh = guard is not None and self._relay.gate.camera(
            now, GatePolicy.of(guard.config.policy)).fresh
        report = self._diag.report(GuardView.of(
            guard, active=self._active, camera_fresh=fresh,
            newest_stamp=self._frames.newest_stamp(), now=now))
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [DiagnosticStatus(
            level=bytes([report.level]), name=f'{self.get_name()}: guard',
            message=report.message, hardware_id=report.values['model'],
            values=[KeyValue(key=k, value=v) for k, v in report.values.items()])]
        self._publish('diagnostics', array)


def main(args: list[str] | None = None) -> int:
    """Run guard_node until shutdown; 1 when autostart could not configure or activate it."""
    return run(GuardNode, args)


if __name__ == '__main__':
    sys.exit(main())
