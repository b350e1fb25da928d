"""guard_node on a live graph: a stamped proposal is judged on its own frame, never the one
before (the camera and proposal topics race).

The camera (best effort, large messages) and `guard/proposals` (reliable, small) are separate
topics, so a planner's proposal can reach the node before the frame it was planned on, and the
node judged it on the frame before: the last scene, not this one. Here the race is forced: the
proposal goes out before its frame. With the proposal's `header.stamp` set (the frame's stamp,
as derived data carries by ROS convention, or the time it was made), the node waits up to
`frame_wait_ms` for a frame stamped at or after it, then judges the newest frame at or before
it, as `guard replay` pairs them; when none comes the answer is an audited `stale_frame`
veto. The same holds for `guard/check` with an empty image. The rule itself is
`guard_ros.frames` (unit tests in test_node_parts.py).
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

from conftest import Probe, make_image, wait_active, wait_for
from guard_interfaces.msg import ActionProposal, Decision
from guard_interfaces.srv import CheckAction
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

pytestmark = [pytest.mark.ros]

GUARD_CONFIG = {
    "model": {"backend": "scripted",
              "scripted": {"responses": [{"text": "ALLOW\nrisk: 0.0"}]}},
    # Generous for a loaded 2-core machine: this is about which frame, not how old.
    "policy": {"deadline_ms": 5000, "max_frame_age_ms": 10000},
}
#: How long the node waits for a proposal's frame. A camera frame is best effort, so the
#: tests send it again every RESEND_S until the decision comes (as a camera keeps sending).
FRAME_WAIT_MS = 4000.0
RESEND_S = 0.2


class Graph:
    def __init__(self, probe: Probe, node: Any) -> None:
        self.probe, self.node, ns = probe, node, node.namespace
        self.decisions = probe.collect(Decision, f"{ns}/guard/decisions")
        self.approved = probe.collect(ActionProposal, f"{ns}/guard/approved")
        self.proposals = probe.publisher(ActionProposal, f"{ns}/guard/proposals")
        self.camera = probe.publisher(Image, f"{ns}/camera/image_raw", qos_profile_sensor_data)

    def now(self) -> Any:
        return self.probe.node.get_clock().now().to_msg()

    def proposal(self, stamp: Any = None) -> ActionProposal:
        msg = ActionProposal(id="p-" + uuid.uuid4().hex[:10], name="pick",
                             description="pick up the cup", arguments_json="{}")
        if stamp is not None:
            msg.header.stamp = stamp
        return msg

    def frame(self, stamp: Any, value: int) -> Image:
        return make_image(stamp=stamp, value=value)

    def decided(self, pid: str) -> Decision | None:
        return next((d for d in self.decisions if d.proposal_id == pid), None)

    def until_decided(self, pid: str, frame: Image | None, timeout: float = 60.0) -> Decision:
        """Send `frame` (again every RESEND_S) until the decision on `pid` arrives."""
        deadline = time.monotonic() + timeout
        while self.decided(pid) is None:
            assert time.monotonic() < deadline, f"no decision for {pid}\n{self.node.log()}"
            if frame is not None:
                self.camera.publish(frame)
            self.probe.wait(lambda: self.decided(pid) is not None, RESEND_S)
        decision = self.decided(pid)
        assert decision is not None
        return decision


def _ns(stamp: Any) -> int:
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


@pytest.fixture(scope="module")
def graph(ros_graph: dict[str, Any]) -> Iterator[Graph]:
    probe = ros_graph["probe"]
    node = ros_graph["start"]("pairing", GUARD_CONFIG, frame_wait_ms=FRAME_WAIT_MS)
    wait_active(probe, node)
    g = Graph(probe, node)
    assert wait_for(lambda: g.proposals.get_subscription_count() > 0
                    and g.camera.get_subscription_count() > 0
                    and probe.node.count_publishers(f"{node.namespace}/guard/decisions") > 0,
                    20.0), node.log()
    yield g
    node.assert_alive()


def _previous_scene(g: Graph) -> Any:
    """A frame the node holds (an unstamped proposal is judged on it): the scene before."""
    stamp = g.now()
    unstamped = g.proposal()
    frame = g.frame(stamp, value=10)
    g.camera.publish(frame)
    time.sleep(RESEND_S)  # the frame first: the unstamped proposal takes the newest at hand
    g.proposals.publish(unstamped)
    while _ns(g.until_decided(unstamped.id, None).frame_stamp) != _ns(stamp):
        g.camera.publish(frame)  # the frame was lost (best effort): once more
        time.sleep(RESEND_S)
        unstamped = g.proposal()
        g.proposals.publish(unstamped)
    return stamp


def test_a_proposal_that_arrives_before_its_frame_is_judged_on_that_frame(graph: Graph) -> None:
    g = graph
    before = _previous_scene(g)
    stamp = g.now()
    assert _ns(stamp) > _ns(before)
    proposal = g.proposal(stamp)  # planned on the frame stamped `stamp`...
    g.proposals.publish(proposal)  # ...which the node has not got yet
    time.sleep(RESEND_S)  # the node has the proposal, and only the frame before
    decision = g.until_decided(proposal.id, g.frame(stamp, value=200))
    assert decision.status == Decision.STATUS_OK, decision
    assert _ns(decision.frame_stamp) == _ns(stamp) != _ns(before)
    assert g.probe.wait(lambda: any(p.id == proposal.id for p in g.approved), 10.0)


def test_a_proposal_between_two_frames_is_judged_on_the_one_before_it(graph: Graph) -> None:
    """Replay's pairing, live: the newest frame at or before the proposal, even when the
    next one is what the node has newest by the time it judges."""
    g = graph
    _previous_scene(g)
    planned = g.now()
    proposal = g.proposal(g.now())
    g.proposals.publish(proposal)  # the node waits for a frame at or after it...
    time.sleep(RESEND_S)
    late = g.frame(planned, value=100)  # ...the frame it was made on comes late (sent a few
    for _ in range(5):  # times: best effort may lose one, and a same-stamp copy changes nothing)
        g.camera.publish(late)
        time.sleep(RESEND_S / 5)
    time.sleep(RESEND_S)
    decision = g.until_decided(proposal.id, g.frame(g.now(), value=200))  # then the next one
    assert decision.status == Decision.STATUS_OK, decision
    assert _ns(decision.frame_stamp) == _ns(planned)


def test_guard_check_with_the_latest_frame_waits_for_the_proposals_frame(graph: Graph) -> None:
    g = graph
    before = _previous_scene(g)
    stamp = g.now()
    client = g.probe.node.create_client(CheckAction, f"{g.node.namespace}/guard/check")
    try:
        assert wait_for(client.service_is_ready, 20.0)
        # An empty image: the CheckAction contract's "the latest camera frame".
        future = client.call_async(CheckAction.Request(proposal=g.proposal(stamp)))
        time.sleep(RESEND_S)
        frame = g.frame(stamp, value=200)
        deadline = time.monotonic() + 60.0
        while not future.done():
            assert time.monotonic() < deadline, g.node.log()
            g.camera.publish(frame)
            wait_for(future.done, RESEND_S)
        decision = future.result().decision
    finally:
        g.probe.node.destroy_client(client)
    assert decision.status == Decision.STATUS_OK, decision
    assert _ns(decision.frame_stamp) == _ns(stamp) != _ns(before)


def test_a_proposal_whose_frame_never_comes_is_a_stale_frame_veto(graph: Graph) -> None:
    g = graph
    before = _previous_scene(g)
    proposal = g.proposal(g.now())
    g.proposals.publish(proposal)
    decision = g.until_decided(proposal.id, None)
    assert (decision.verdict, decision.status) == (Decision.VETO, Decision.STATUS_STALE_FRAME)
    assert _ns(decision.frame_stamp) == _ns(before)  # the frame it had, and refused
    assert "older than the proposal" in decision.error
    assert not any(p.id == proposal.id for p in g.approved)
    records = [json.loads(line) for line in
               (g.node.workdir / "audit.jsonl").read_text().splitlines() if line]
    audited = [r["decision"] for r in records if r.get("kind") == "decision"
               and r["decision"]["proposal_id"] == proposal.id]
    assert [d["status"] for d in audited] == ["stale_frame"]
