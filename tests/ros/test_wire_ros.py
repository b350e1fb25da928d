"""guard.wire through the node's and replay's own entry points, on real ROS messages.

- Every encoding: one rclpy `sensor_msgs/Image`, decoded by guard_node's camera path, and its
  CDR bytes written to a rosbag2 bag and decoded by `guard replay`'s reader (rosbags'
  messages), give identical frames, equal to the expected RGB.
- Time: 10,000 random epoch stamps go header -> frame -> decision -> `Decision` message
  through an in-process guard_node and come back as the original `builtin_interfaces/Time`.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")
pytest.importorskip("guard_interfaces")
pytest.importorskip("rosbags")

import rclpy
from builtin_interfaces.msg import Time
from guard_interfaces.msg import ActionProposal
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image

from guard.replay.bag import BagEpisode
from guard.replay.episode import FrameEvent
from guard.replay.writer import BagProposal, BagRaw, write_bag

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wire_cases import cases, opencv_yuv

pytestmark = [pytest.mark.ros]
CASES = cases(seed=3)


def _image(case: Any, ns: int) -> Image:
    msg = Image(height=case.height, width=case.width, encoding=case.encoding, step=case.step,
                is_bigendian=case.is_bigendian)
    msg.data = case.data
    msg.header.stamp = Time(sec=ns // 10**9, nanosec=ns % 10**9)
    return msg


def test_every_encoding_decodes_identically_on_the_node_and_in_replay(tmp_path: Path) -> None:
    from guard_ros.frames import CameraFrame

    t0 = 1_700_000_000 * 10**9 + 123_456_789
    messages = [_image(case, t0 + i * 10**6) for i, case in enumerate(CASES)]
    # The node's camera path: the message as the subscription hands it over.
    node_frames = [
        CameraFrame(msg, t0 + i * 10**6).frame(50_000_000, "camera/image_raw").image
        for i, msg in enumerate(messages)]
    # Replay's: the same bytes in a bag, read back with rosbags by guard replay's reader.
    items: list[Any] = [
        BagRaw(t=(t0 + i * 10**6) / 1e9, topic="/camera/image_raw",
               msgtype="sensor_msgs/msg/Image", data=serialize_message(msg))
        for i, msg in enumerate(messages)]
    items.append(BagProposal(t=t0 / 1e9 + 1.0, proposal={"id": "p", "name": "act"}))
    bag = write_bag(tmp_path / "bag", items)
    episode = BagEpisode(bag)
    try:
        replay_frames = [e.pixels() for e in episode.events() if isinstance(e, FrameEvent)]
    finally:
        episode.close()
    assert len(replay_frames) == len(CASES) == len(node_frames)
    for case, node, replay in zip(CASES, node_frames, replay_frames, strict=True):
        want = case.want if case.want is not None else opencv_yuv(case)
        np.testing.assert_array_equal(node, replay, err_msg=case.encoding)
        np.testing.assert_array_equal(node, want, err_msg=case.encoding)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    from guard_ros.guard_node import GuardNode

    config = tmp_path / "guard.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"backend": "scripted",
                  "scripted": {"responses": [{"text": "ALLOW\nrisk: 0.0"}]}},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }))
    context = Context()
    rclpy.init(context=context, domain_id=230)
    node = GuardNode(context=context, parameter_overrides=[
        Parameter("config", value=str(config))])
    try:
        assert node._judge.guard is None
        node.trigger_configure()
        assert node._judge.guard is not None
        yield node
    finally:
        node.release()
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_frame_stamps_come_back_to_ros_exactly(node: Any) -> None:
    rng = random.Random(24)
    case = next(c for c in cases() if c.encoding == "rgb8")
    for i in range(10_000):
        ns = rng.randrange(1, 2**31 * 10**9)
        image = _image(case, ns)
        proposal = ActionProposal(id=f"p{i}", name="act", description="pick up the cup")
        if i % 2:  # guard/check with an image of its own
            decision, _ = node._judge.judge(proposal, image, node._now_ns())
        else:  # the camera topic: stored by the callback, judged as the newest frame
            node._on_image(image)
            decision, _ = node._judge.judge(proposal, None, node._now_ns())
        assert decision.frame_stamp_ns == ns, decision
        _, out = node._to_msg(proposal, decision)
        assert (out.frame_stamp.sec, out.frame_stamp.nanosec) == (
            image.header.stamp.sec, image.header.stamp.nanosec), (ns, decision.frame_stamp)
