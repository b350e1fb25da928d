"""guard_node with a real (tiny, random-weight) Qwen2.5-VL through the transformers backend.

The model and backend come from the node's `model` and `backend` parameters (no guard config
file), as `ros2 run guard_ros guard_node --ros-args -p model:=DIR` would give them. A random
model does not follow the answer format, so the decision is usually a fail-closed veto; what
matters is that the real load, preprocessing and generation run inside the node.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("guard_interfaces")
pytest.importorskip("transformers")

from conftest import make_image, wait_active, wait_for
from guard_interfaces.msg import ActionProposal, Decision
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_tiny_qwen2_5_vl_judges_in_the_node(ros_graph: dict[str, Any]) -> None:
    model_dir = ros_graph["tmp"] / "tiny_qwen2_5_vl"
    made = subprocess.run(
        [sys.executable, "-m", "guard.cli.main", "tiny-model", "--arch", "qwen2_5_vl",
         "--out", str(model_dir), "--seed", "0"],
        env=ros_graph["env"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr

    probe = ros_graph["probe"]
    node = ros_graph["start"](
        "tiny", None, model=str(model_dir), backend="transformers", deadline_ms=60000)
    wait_active(probe, node, timeout=120.0)
    ns = node.namespace
    decisions = probe.collect(Decision, f"{ns}/guard/decisions")
    proposals = probe.publisher(ActionProposal, f"{ns}/guard/proposals")
    camera = probe.publisher(Image, f"{ns}/camera/image_raw", qos_profile_sensor_data)
    assert wait_for(lambda: proposals.get_subscription_count() > 0
                    and camera.get_subscription_count() > 0
                    and probe.node.count_publishers(f"{ns}/guard/decisions") > 0, 10.0)

    def judged_with_frame() -> bool:
        camera.publish(make_image("bgr8", 128, 96, probe.node.get_clock().now().to_msg()))
        pid = "tiny-" + uuid.uuid4().hex[:8]
        proposals.publish(ActionProposal(id=pid, name="stove_on", description="turn on the stove"))
        assert probe.wait(lambda: any(d.proposal_id == pid for d in decisions), 60.0), node.log()
        return next(d for d in decisions if d.proposal_id == pid).status != "no_frame"

    assert wait_for(judged_with_frame, 60.0, interval=0.1)
    d = decisions[-1]
    assert d.model == str(model_dir)
    assert d.status in ("ok", "error"), d
    if d.status != "ok":
        assert d.verdict == Decision.VETO  # fail closed, never an allow
    assert d.frame_stamp.sec > 0
