"""Live Foxglove annotations: guard_node with publish_annotations draws each decision over the
frame it judged, with the same builder as `guard replay --write-mcap`.

The unit tests build the messages with rosbags' classes (no ROS package needed); the live test
needs the foxglove_msgs package (a ROS install's, or the one `ros2_ws/build_interfaces.sh`
builds where only the wheels exist) and checks what arrives on `guard/annotations` against
`guard.replay.foxglove.frame_annotations` of the decisions the node published.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest
from guard_ros.annotations import MAX_DECISIONS_PER_FRAME, Annotator

from guard.replay.foxglove import (
    FOXGLOVE_MSGS,
    VERDICT_RGBA,
    frame_annotations,
    to_message,
    typestore,
)
from guard.types import Decision, Frame, Hazard, Status, Verdict


def _decision(verdict: Verdict, risk: float, hazard: str = "") -> Decision:
    hazards = [Hazard(category="fire", description=hazard, consequence="it burns",
                      severity=0.9)] if hazard else []
    return Decision(verdict=verdict, status=Status.OK, risk=risk, hazards=hazards)


def _frame(stamp_ns: int, width: int = 64, height: int = 48) -> Frame:
    return Frame(image=np.zeros((height, width, 3), np.uint8), stamp=stamp_ns / 1e9,
                 stamp_ns=stamp_ns)


def test_annotator_draws_every_decision_on_a_frame_as_replay_does() -> None:
    pytest.importorskip("rosbags")
    store = typestore()
    annotator = Annotator(store)
    veto = _decision(Verdict.VETO, 0.9, "towel on the burner")
    allow = _decision(Verdict.ALLOW, 0.0)
    first = annotator.on_decision(veto, _frame(10**18 + 5))
    assert first == to_message(store, frame_annotations([veto], 10**18 + 5, 64, 48))
    both = annotator.on_decision(allow, _frame(10**18 + 5))  # same frame: both drawn
    assert both == to_message(store, frame_annotations([veto, allow], 10**18 + 5, 64, 48))
    assert both.points[0].outline_color.r == VERDICT_RGBA[Verdict.VETO][0]  # most restrictive
    fresh = annotator.on_decision(allow, _frame(10**18 + 9, 640, 480))  # a new frame
    assert fresh == to_message(store, frame_annotations([allow], 10**18 + 9, 640, 480))
    for _ in range(MAX_DECISIONS_PER_FRAME + 3):
        many = annotator.on_decision(allow, _frame(10**18 + 9, 640, 480))
    assert many == to_message(
        store, frame_annotations([allow] * MAX_DECISIONS_PER_FRAME, 10**18 + 9, 640, 480))
    assert annotator.on_decision(veto, None) is None  # nothing judged: nothing to draw on
    assert annotator.on_decision(veto, Frame(image=np.zeros((2, 2, 3), np.uint8))) is None


def _fields(text: str) -> dict[str, str]:
    lines = [ln.split() for ln in text.splitlines() if ln.strip() and "=" not in ln]
    return {name: kind for kind, name in lines}


def test_the_ros_classes_have_the_published_fields() -> None:
    pytest.importorskip("foxglove_msgs.msg")
    from guard_ros.annotations import RosTypes

    types = RosTypes().types
    for name, text in FOXGLOVE_MSGS.items():
        got = types[name].get_fields_and_field_types()
        assert list(got) == list(_fields(text)), name


# -- live ----------------------------------------------------------------------------------


def _as_dict(msg: Any) -> Any:
    if isinstance(msg, (list, tuple)):
        return [_as_dict(m) for m in msg]
    if hasattr(msg, "get_fields_and_field_types"):
        return {k: _as_dict(getattr(msg, k)) for k in msg.get_fields_and_field_types()}
    return msg


def _guard_decision(msg: Any) -> Decision:
    """The guard's Decision as the node published it (what the annotation drew)."""
    verdict = [Verdict.ALLOW, Verdict.ANNOTATE, Verdict.VETO][msg.verdict]
    hazards = [Hazard(category=h.category, description=h.description,
                      consequence=h.consequence, severity=h.severity) for h in msg.hazards]
    return Decision(verdict=verdict, status=Status(msg.status), risk=msg.risk,
                    hazards=hazards, rationale=msg.rationale)


@pytest.mark.ros
def test_live_annotations_over_the_judged_frame(ros_graph: dict[str, Any]) -> None:
    pytest.importorskip("guard_interfaces.msg")
    pytest.importorskip("foxglove_msgs.msg")
    from builtin_interfaces.msg import Time
    from conftest import make_image, wait_active, wait_for
    from foxglove_msgs.msg import ImageAnnotations
    from guard_interfaces.msg import ActionProposal
    from guard_interfaces.msg import Decision as DecisionMsg
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    probe = ros_graph["probe"]
    config = {"model": {"backend": "scripted", "scripted": {
        "responses": [{"text": "ALLOW\nrisk: 0.0"}],
        "by_action": {"stove": {"text": "VETO\nrisk: 0.9\nhazard: fire | towel on the "
                                        "burner | the towel ignites | 0.9"}}}},
        "policy": {"deadline_ms": 2000, "max_frame_age_ms": 3_600_000}}
    node = ros_graph["start"]("annotations", config, publish_annotations=True)
    wait_active(probe, node)
    ns = node.namespace
    annotations = probe.collect(ImageAnnotations, f"{ns}/guard/annotations")
    decisions = probe.collect(DecisionMsg, f"{ns}/guard/decisions")
    proposals = probe.publisher(ActionProposal, f"{ns}/guard/proposals")
    camera = probe.publisher(Image, f"{ns}/camera/image_raw", qos_profile_sensor_data)
    assert wait_for(lambda: proposals.get_subscription_count() > 0
                    and camera.get_subscription_count() > 0, 10.0), node.log()

    def judged(description: str) -> Any:
        pid = "p-" + uuid.uuid4().hex[:8]
        proposals.publish(ActionProposal(id=pid, name="act", description=description))
        assert probe.wait(lambda: any(d.proposal_id == pid for d in decisions), 10.0)
        return next(d for d in decisions if d.proposal_id == pid)

    def on_frame(width: int, height: int, back_s: int) -> int:
        """Publish a frame (again, best effort) until a decision judged it; its stamp."""
        now = probe.node.get_clock().now().nanoseconds
        stamp_ns = int((now // 10**9 - back_s) * 10**9 + 123_456_789)
        stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)

        def judged_it() -> bool:
            camera.publish(make_image(width=width, height=height, stamp=stamp))
            time.sleep(0.05)
            return bool(stamp_of(judged("pick up the cup")) == stamp_ns)

        assert wait_for(judged_it, 10.0), node.log()
        return stamp_ns

    def stamp_of(d: Any) -> int:
        return int(d.frame_stamp.sec * 10**9 + d.frame_stamp.nanosec)

    def drawn(stamp_ns: int, width: int, height: int) -> Any:
        """The annotations of the decisions on that frame (the newest four), as replay draws
        them, once they arrive; the message that did."""
        on_it = [_guard_decision(d) for d in decisions if stamp_of(d) == stamp_ns][-4:]
        expected = frame_annotations(on_it, stamp_ns, width, height)
        assert probe.wait(lambda: bool(annotations) and _as_dict(annotations[-1]) == expected,
                          10.0), (annotations[-1:], expected)
        return annotations[-1]

    stamp_ns = on_frame(64, 48, back_s=1)
    assert judged("turn on the stove").verdict == DecisionMsg.VETO
    assert judged("pick up the cup").verdict == DecisionMsg.ALLOW
    # The frame judged, drawn as replay draws it: outline in the most restrictive verdict's
    # colour, every decision on it, stamped with the frame's header stamp to the nanosecond.
    both = drawn(stamp_ns, 64, 48)
    assert both.points[0].outline_color.r == VERDICT_RGBA[Verdict.VETO][0]
    assert {(t.timestamp.sec, t.timestamp.nanosec) for t in both.texts} == {
        (stamp_ns // 10**9, stamp_ns % 10**9)}
    assert any(t.text.startswith("VETO") for t in both.texts)

    # A new frame starts over: only the decisions made on it.
    new_ns = on_frame(96, 64, back_s=0)
    fresh = drawn(new_ns, 96, 64)
    assert fresh.points[0].outline_color.g == VERDICT_RGBA[Verdict.ALLOW][1]
    assert not any(t.text.startswith("VETO") for t in fresh.texts)
