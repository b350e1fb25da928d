"""guard_node as a managed node: transitions, no_frame, CompressedImage, QoS overrides, deadlines.

The node here starts with autostart:=false (as under a lifecycle manager), takes JPEG frames
(image_format:=compressed) on `camera/image_raw/compressed`, where image_transport's
compressed transport publishes them, on a camera subscription overridden to reliable QoS;
its scripted judge answers after 50 ms.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("guard_interfaces")

from conftest import Probe, wait_for
from guard_interfaces.msg import ActionProposal, Decision
from lifecycle_msgs.msg import Transition
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CompressedImage

pytestmark = [pytest.mark.ros]

GUARD_CONFIG = {
    "model": {
        "backend": "scripted",
        "scripted": {"responses": [{"text": "ALLOW\nrisk: 0.0", "delay_ms": 50}]},
    },
    "policy": {"deadline_ms": 5000, "max_frame_age_ms": 2000},
}


def jpeg(stamp: Any) -> CompressedImage:
    import numpy as np
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(buf, format="JPEG")
    msg = CompressedImage(format="jpeg")
    msg.header.stamp = stamp
    msg.data = buf.getvalue()
    return msg


class Managed:
    def __init__(self, probe: Probe, node: Any) -> None:
        self.probe, self.node, ns = probe, node, node.namespace
        self.decisions = probe.collect(Decision, f"{ns}/guard/decisions")
        self.proposals = probe.publisher(ActionProposal, f"{ns}/guard/proposals")
        # Reliable, as the node's overridden camera subscription requires.
        self.camera = probe.publisher(CompressedImage, f"{ns}/camera/image_raw/compressed")
        self.camera_topic = f"{ns}/camera/image_raw/compressed"

    def state(self) -> str:
        return self.probe.lifecycle_state(self.node.fqn)

    def transition(self, transition: int, expect: str) -> None:
        assert self.probe.change_state(self.node.fqn, transition), self.node.log()
        assert self.state() == expect

    def to_unconfigured(self) -> None:
        state = self.state()
        if state == "active":
            self.transition(Transition.TRANSITION_DEACTIVATE, "inactive")
            state = "inactive"
        if state == "inactive":
            self.transition(Transition.TRANSITION_CLEANUP, "unconfigured")

    def activate(self) -> None:
        self.transition(Transition.TRANSITION_CONFIGURE, "inactive")
        self.transition(Transition.TRANSITION_ACTIVATE, "active")
        assert wait_for(lambda: self.proposals.get_subscription_count() > 0
                        and self.probe.node.count_publishers(
                            f"{self.node.namespace}/guard/decisions") > 0, 10.0)

    def send_frame(self) -> None:
        assert wait_for(lambda: self.camera.get_subscription_count() > 0, 10.0)
        self.camera.publish(jpeg(self.probe.node.get_clock().now().to_msg()))

    def judge(self, text: str = "pick up the cup", timeout: float = 10.0) -> Decision:
        pid = "p-" + uuid.uuid4().hex[:10]
        self.proposals.publish(ActionProposal(id=pid, name="act", description=text))
        assert self.probe.wait(lambda: any(d.proposal_id == pid for d in self.decisions),
                               timeout), self.node.log()
        return next(d for d in self.decisions if d.proposal_id == pid)


@pytest.fixture(scope="module")
def managed(ros_graph: dict[str, Any]) -> Iterator[Managed]:
    probe = ros_graph["probe"]
    node = ros_graph["start"](
        "managed", GUARD_CONFIG, autostart=False, image_format="compressed",
        **{"qos_overrides.{ns}/camera/image_raw/compressed.subscription.reliability":
           "reliable"})
    m = Managed(probe, node)
    yield m
    node.assert_alive()


def test_lifecycle_transitions(managed: Managed) -> None:
    m = managed
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline and state != "unconfigured":
        m.node.assert_alive()
        try:
            state = m.state()
        except AssertionError:
            pass
    assert state == "unconfigured"  # autostart off: waits for a manager
    assert m.probe.node.count_subscribers(f"{m.node.namespace}/guard/proposals") == 0

    m.transition(Transition.TRANSITION_CONFIGURE, "inactive")
    # Inactive: configured (publishers exist) but takes no input, so nobody mistakes it for
    # a running guard.
    assert m.probe.node.count_publishers(f"{m.node.namespace}/guard/decisions") == 1
    assert m.probe.node.count_subscribers(f"{m.node.namespace}/guard/proposals") == 0

    m.transition(Transition.TRANSITION_ACTIVATE, "active")
    assert wait_for(lambda: m.proposals.get_subscription_count() > 0, 10.0)
    d = m.judge()
    assert (d.verdict, d.status) == (Decision.VETO, "no_frame")

    # The camera subscription is CompressedImage on image_transport's topic, reliable as
    # overridden; nothing subscribes the raw topic itself.
    infos = m.probe.node.get_subscriptions_info_by_topic(m.camera_topic)
    assert [i.topic_type for i in infos] == ["sensor_msgs/msg/CompressedImage"]
    assert m.probe.node.count_subscribers(f"{m.node.namespace}/camera/image_raw") == 0
    assert infos[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE
    m.send_frame()
    assert wait_for(lambda: m.judge().status == "ok", 10.0, interval=0.05)
    d = m.judge()
    assert (d.verdict, d.status) == (Decision.ALLOW, "ok")
    assert d.frame_stamp.sec > 0

    m.transition(Transition.TRANSITION_DEACTIVATE, "inactive")
    assert wait_for(lambda: m.proposals.get_subscription_count() == 0, 10.0)
    m.transition(Transition.TRANSITION_CLEANUP, "unconfigured")
    assert wait_for(
        lambda: m.probe.node.count_publishers(f"{m.node.namespace}/guard/decisions") == 0, 10.0)

    # Configure again from scratch: a clean slate, no frame from before.
    m.activate()
    d = m.judge()
    assert (d.verdict, d.status) == (Decision.VETO, "no_frame")
    m.node.assert_alive()


def test_tiny_deadline_gives_timeout_vetoes(managed: Managed) -> None:
    m = managed
    m.to_unconfigured()
    result, = m.probe.set_params(m.node.fqn, deadline_ms=1)  # an int is fine for a number
    assert result.successful, result.reason
    bad, = m.probe.set_params(m.node.fqn, deadline_ms=-5.0)
    assert not bad.successful and "deadline_ms" in bad.reason
    try:
        m.activate()
        m.send_frame()
        # Until the frame is in, no_frame; after that every check runs out of time.
        assert wait_for(lambda: m.judge().status != "no_frame", 10.0, interval=0.05)
        for _ in range(3):
            d = m.judge()
            assert (d.verdict, d.status) == (Decision.VETO, "timeout"), d
            assert d.latency_ms < 1000
    finally:
        m.to_unconfigured()
        result, = m.probe.set_params(m.node.fqn, deadline_ms=0.0)
        assert result.successful


def test_autostart_failure_exits_nonzero(ros_graph: dict[str, Any]) -> None:
    node = ros_graph["start"]("broken", None, config="/nonexistent/guard.yaml")
    node.expected_code = 1
    assert wait_for(lambda: node.proc.poll() is not None, 30.0), node.log()
    assert node.proc.returncode == 1
    assert "config file not found" in node.log()


@pytest.mark.parametrize(("args", "expected"), [
    ([], "/robot/camera/image_raw/compressed"),
    (["-r", "camera/image_raw:=/front/image"], "/front/image/compressed"),
    (["-r", "/robot/camera/image_raw/compressed:=/jpeg"], "/jpeg"),
])
def test_compressed_topic_follows_the_base_topic_remapping(
        args: list[str], expected: str) -> None:
    # As image_transport does: the base topic is resolved (namespace, remapping), then
    # '/compressed' appended; a remapping of the compressed topic itself still applies.
    import rclpy
    from guard_ros.guard_node import GuardNode
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    context = Context()
    rclpy.init(context=context, domain_id=231)
    node = GuardNode(context=context, namespace="robot", cli_args=["--ros-args", *args],
                     parameter_overrides=[Parameter("image_format", value="compressed")])
    try:
        msg_type, topic = node._camera_topic("compressed")
        sub = node.create_subscription(msg_type, topic, lambda _: None, 1)
        assert (msg_type, sub.topic_name) == (CompressedImage, expected)
        assert node._camera_topic("raw")[1] == "camera/image_raw"
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
