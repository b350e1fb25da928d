"""The cmd_vel gate on a live graph, configured as nav2's collision_monitor is.

One node process: `enable_stamped_cmd_vel` (TwistStamped in and out), its own topic names
(`cmd_vel_in_topic`, `cmd_vel_out_topic`), `stop_pub_timeout` 0.5 s, and the latched
`guard/gate_state`. Before, the gate took plain Twist on fixed names, had no state topic and
sent zeros forever (31 in 3 s with no camera).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("guard_interfaces")

from conftest import make_image, wait_active, wait_for
from geometry_msgs.msg import TwistStamped
from guard_interfaces.msg import ActionProposal, Decision
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String

pytestmark = [pytest.mark.ros]

GUARD_CONFIG = {
    "model": {
        "backend": "scripted",
        "scripted": {
            "responses": [{"text": "ALLOW\nrisk: 0.0"}],
            "by_action": {"stove": {"text": "VETO\nrisk: 0.9"}},
        },
    },
    "policy": {"deadline_ms": 600, "max_frame_age_ms": 1500},
}
STOP_PUB_TIMEOUT = 0.5
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def gate(ros_graph: dict[str, Any]) -> Iterator[dict[str, Any]]:
    probe = ros_graph["probe"]
    node = ros_graph["start"](
        "gate", GUARD_CONFIG, gate_cmd_vel=True, enable_stamped_cmd_vel=True,
        cmd_vel_in_topic="nav/cmd_vel_raw", cmd_vel_out_topic="nav/cmd_vel_safe",
        stop_pub_timeout=STOP_PUB_TIMEOUT, watchdog_period_ms=50.0)
    wait_active(probe, node)
    ns = node.namespace
    out = probe.collect(TwistStamped, f"{ns}/nav/cmd_vel_safe")
    cmd_in = probe.publisher(TwistStamped, f"{ns}/nav/cmd_vel_raw")
    assert wait_for(lambda: cmd_in.get_subscription_count() > 0
                    and probe.node.count_publishers(f"{ns}/nav/cmd_vel_safe") > 0, 10.0)
    yield {"probe": probe, "node": node, "ns": ns, "out": out, "cmd_in": cmd_in}
    node.assert_alive()


class _States:
    """The `guard/gate_state` messages received so far, decoded on access."""

    def __init__(self, raw: list[String]) -> None:
        self.raw = raw

    def __getitem__(self, i: int) -> dict[str, str]:
        decoded: dict[str, str] = json.loads(self.raw[i].data)
        return decoded

    def __len__(self) -> int:
        return len(self.raw)


def _states(g: dict[str, Any]) -> _States:
    """Subscribe late to the latched state topic: the current state arrives at once."""
    return _States(g["probe"].collect(String, f"{g['ns']}/guard/gate_state", LATCHED))


def _moving(frame_id: str = "base_link") -> TwistStamped:
    msg = TwistStamped()
    msg.header.frame_id = frame_id
    msg.twist.linear.x = 0.5
    return msg


def test_topics_are_parameters_and_typed_stamped(gate: dict[str, Any]) -> None:
    probe, ns = gate["probe"], gate["ns"]
    assert probe.node.count_publishers(f"{ns}/cmd_vel") == 0
    assert probe.node.count_subscribers(f"{ns}/cmd_vel_in") == 0
    types = dict(probe.node.get_topic_names_and_types())
    assert types[f"{ns}/nav/cmd_vel_safe"] == ["geometry_msgs/msg/TwistStamped"]
    assert types[f"{ns}/nav/cmd_vel_raw"] == ["geometry_msgs/msg/TwistStamped"]


def test_no_camera_stops_then_goes_quiet_and_the_state_is_latched(
        gate: dict[str, Any]) -> None:
    probe, out = gate["probe"], gate["out"]
    # Active for a while with no camera: stopped, and past stop_pub_timeout, so quiet.
    time.sleep(STOP_PUB_TIMEOUT + 0.5)
    states = _states(gate)
    assert probe.wait(lambda: len(states) >= 1, 5.0), gate["node"].log()
    assert (states[-1]["state"], states[-1]["reason"]) == ("stopped", "stale_camera")
    start = len(out)
    for _ in range(10):
        gate["cmd_in"].publish(_moving())
        time.sleep(0.1)
    time.sleep(0.3)
    assert len(out) == start, "zeros (or commands) sent long after the stop"


def test_allow_passes_stamped_then_veto_zeros_for_stop_pub_timeout(
        gate: dict[str, Any]) -> None:
    probe, out, ns = gate["probe"], gate["out"], gate["ns"]
    states = _states(gate)
    decisions = probe.collect(Decision, f"{ns}/guard/decisions")
    camera = probe.publisher(Image, f"{ns}/camera/image_raw", qos_profile_sensor_data)
    proposals = probe.publisher(ActionProposal, f"{ns}/guard/proposals")
    timer = probe.node.create_timer(
        0.05, lambda: camera.publish(make_image(stamp=probe.node.get_clock().now().to_msg())))
    try:
        def decide(description: str) -> Decision:
            pid = "p-" + uuid.uuid4().hex[:8]
            proposals.publish(ActionProposal(id=pid, name="act", description=description))
            assert probe.wait(lambda: any(d.proposal_id == pid for d in decisions), 10.0)
            return next(d for d in decisions if d.proposal_id == pid)

        # Camera fresh, no decision yet: still stopped, now for want of a decision.
        assert probe.wait(lambda: len(states) and states[-1]["reason"] == "no_decision_yet",
                          5.0), [states[i] for i in range(len(states))]
        assert decide("pick up the cup").verdict == Decision.ALLOW
        assert probe.wait(lambda: states[-1]["state"] == "passing", 5.0)
        start = len(out)
        gate["cmd_in"].publish(_moving("odom"))
        assert probe.wait(lambda: any(t.twist.linear.x == 0.5 for t in out[start:]), 5.0)
        relayed = next(t for t in out[start:] if t.twist.linear.x == 0.5)
        assert relayed.header.frame_id == "odom"

        assert decide("put the towel on the stove").verdict == Decision.VETO
        assert probe.wait(lambda: states[-1]["reason"] == "veto", 5.0)
        start = len(out)
        # Zeros (stamped, in the last command's frame) for stop_pub_timeout, then quiet.
        time.sleep(STOP_PUB_TIMEOUT + 1.0)
        zeros = out[start:]
        assert len(zeros) >= 3, len(zeros)
        assert all(t.twist.linear.x == 0.0 and t.header.frame_id == "odom" for t in zeros)
        stamps = [t.header.stamp.sec + t.header.stamp.nanosec * 1e-9 for t in zeros]
        assert stamps[-1] - stamps[0] <= STOP_PUB_TIMEOUT + 0.2, stamps
        quiet_from = len(out)
        time.sleep(0.5)
        assert len(out) == quiet_from
    finally:
        probe.node.destroy_timer(timer)
