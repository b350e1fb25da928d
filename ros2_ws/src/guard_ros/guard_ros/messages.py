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

"""guard_node's outgoing messages, built from guard decisions (no rclpy: message classes only).

The verdict codes are `conversions.verdict_code`'s; times are the decision's integer
nanoseconds, so the judged camera message's header stamp comes back to ROS exactly.
"""

from __future__ import annotations

from builtin_interfaces.msg import Time
from guard.types import Decision
from guard.wire import ns_to_time
from guard_interfaces.msg import ActionProposal as ActionProposalMsg
from guard_interfaces.msg import Decision as DecisionMsg
from guard_interfaces.msg import Hazard as HazardMsg
from guard_ros.conversions import verdict_code
from guard_ros.frames import frame_time_ns


def time_msg(ns: int | None) -> Time:
    """Return the `builtin_interfaces/Time` of `ns`: zero (unknown) for None or out of range."""
    sec, nanosec = ns_to_time(ns) if ns is not None else (0, 0)
    if not -(2**31) <= sec < 2**31:
        sec, nanosec = 0, 0
    return Time(sec=sec, nanosec=nanosec)


def decision_msg(proposal: ActionProposalMsg, decision: Decision, stamp: Time) -> DecisionMsg:
    """Return the `guard_interfaces/Decision` of `decision` on `proposal`.

    Args:
        proposal: the proposal judged (its id and frame_id are answered back).
        decision: the guard's decision.
        stamp: the header stamp (the node's clock when the decision is published).

    Raises:
        ValueError, TypeError, AssertionError: a decision the message cannot hold (the node
            answers a veto instead).
    """
    out = DecisionMsg()
    out.header.stamp = stamp
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
