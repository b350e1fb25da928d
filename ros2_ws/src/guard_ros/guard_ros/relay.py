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

"""The sending side of the cmd_vel gate: commands relayed, zeros sent, state changes published.

What passes is `gate.CmdVelGate`'s decision alone; `GateRelay` sends what it answers through
the node's publishers (given as one `publish(name, msg)` callable: 'cmd_vel' and
'gate_state'), so it runs without rclpy. One lock orders a verdict against the commands: once
a veto is recorded, no command judged open before it can still go out after its zero. A
command the base must not be given (`gate.command_problem`: NaN or infinite components, a
stamp that is not a valid time, too far ahead or too old) is never sent: the gate stops on it.
"""

from __future__ import annotations

from collections.abc import Callable
import threading
from typing import Any

from geometry_msgs.msg import Twist, TwistStamped
from guard.types import Verdict
from guard.wire import ns_to_seconds
from guard_ros.frames import header_stamp, InvalidStamp
from guard_ros.gate import Action, CmdVelGate, command_problem, GatePolicy, GateState, Step
from guard_ros.messages import time_msg
from std_msgs.msg import String


class GateRelay:
    """Relay velocity commands through a `CmdVelGate`; send zeros and the state it answers."""

    def __init__(self, gate: CmdVelGate, publish: Callable[[str, Any], None],
                 clock_ns: Callable[[], int], policy: Callable[[], GatePolicy],
                 stamped: bool = False, on_zero: Callable[[], None] = lambda: None) -> None:
        """Relay through `gate`.

        Args:
            gate: the gate's decision.
            publish: sends a message on 'cmd_vel' or 'gate_state' (the node's publishers).
            clock_ns: the node's clock in integer nanoseconds (the camera stamps' time base).
            policy: the guard's policy as in force now.
            stamped: commands are `TwistStamped` (zeros then carry the latest frame_id).
            on_zero: called for each zero sent (the node counts them on /diagnostics).
        """
        self.gate = gate
        self.stamped = stamped
        self._on_zero = on_zero
        self._publish = publish
        self._clock_ns = clock_ns
        self._policy = policy
        self._lock = threading.Lock()
        self._frame_id = ''  # of the latest stamped command, for the zeros sent

    def zero(self) -> Twist | TwistStamped:
        """Return a zero velocity command of the gate's type."""
        if not self.stamped:
            return Twist()
        zero = TwistStamped()
        zero.header.stamp = time_msg(self._clock_ns())
        zero.header.frame_id = self._frame_id
        return zero

    def on_command(self, command: Twist | TwistStamped) -> Step:
        """Relay a command just received, or a zero instead, or nothing (the gate says)."""
        twist = command.twist if self.stamped else command
        stamp_ns, refused = None, None
        if self.stamped:
            self._frame_id = command.header.frame_id
            try:
                stamp_ns = header_stamp(command.header)
            except InvalidStamp as exc:
                refused = f'velocity command {exc}'
        components = (twist.linear.x, twist.linear.y, twist.linear.z,
                      twist.angular.x, twist.angular.y, twist.angular.z)
        with self._lock:
            now, policy = self._now(), self._policy()
            if refused is None:
                refused = command_problem(components, ns_to_seconds(stamp_ns), now, policy)
            return self._send(self.gate.on_command(now, policy, refused), command)

    def on_tick(self) -> Step:
        """A watchdog tick: a zero while the stop is recent, else nothing."""
        with self._lock:
            return self._send(self.gate.on_tick(self._now(), self._policy()), None)

    def on_decision(self, verdict: Verdict, send: bool) -> Step | None:
        """Record a proposal's verdict; with `send`, act on it now (a veto stops at once)."""
        with self._lock:
            self.gate.on_decision(verdict)
            if not send:
                return None
            return self._send(self.gate.on_tick(self._now(), self._policy()), None)

    def publish_state(self, state: GateState) -> None:
        """Publish `state` on guard/gate_state (JSON, see `GateState.to_json`)."""
        self._publish('gate_state', String(data=state.to_json()))

    def _now(self) -> float:
        return float(ns_to_seconds(self._clock_ns()))

    def _send(self, step: Step, command: Twist | TwistStamped | None) -> Step:
        if step.action is Action.PASS and command is not None:
            self._publish('cmd_vel', command)
        elif step.action is Action.ZERO:
            self._publish('cmd_vel', self.zero())
            self._on_zero()
        if step.changed:
            self.publish_state(step.state)
        return step
