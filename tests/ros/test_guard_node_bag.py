"""Replays the committed recording tests/ros/data/episode (MCAP) into guard_node.

The bag holds 64x48 frames (rgb8, bgr8, mono8) and five proposals; data/make_episode.py wrote
it and lists what each proposal must get. The player runs as users run it
(`python -m guard_ros.bag_player`), publishing /clock so the node, with use_sim_time, judges
frame ages in bag time as it would have live.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("guard_interfaces")
pytest.importorskip("rosbags")

from conftest import DATA, wait_active, wait_for
from guard_interfaces.msg import ActionProposal, Decision

pytestmark = [pytest.mark.ros]

EPISODE = DATA / "episode"
EXPECTED = json.loads((DATA / "episode_expected.json").read_text())
VERDICTS = {"allow": Decision.ALLOW, "annotate": Decision.ANNOTATE, "veto": Decision.VETO}
GUARD_CONFIG = {
    "model": {
        "backend": "scripted",
        "scripted": {
            "responses": [{"text": "ALLOW\nrisk: 0.0"}],
            "by_action": {
                "stove": {"text": "VETO\nrisk: 0.9\nhazard: fire | towel on a burner | fire"},
                "drawer": {"text": "ANNOTATE\nrisk: 0.4"},
            },
        },
    },
    "policy": {"deadline_ms": 2000, "max_frame_age_ms": 500},
}


def test_replay_committed_mcap(ros_graph: dict[str, Any], tmp_path: Path) -> None:
    probe = ros_graph["probe"]
    node = ros_graph["start"]("replay", GUARD_CONFIG, use_sim_time=True)
    wait_active(probe, node)
    ns = node.namespace
    decisions = probe.collect(Decision, f"{ns}/guard/decisions")
    approved = probe.collect(ActionProposal, f"{ns}/guard/approved")
    assert wait_for(lambda: probe.node.count_publishers(f"{ns}/guard/decisions") > 0, 10.0)

    log = tmp_path / "player.log"
    with log.open("w") as out:
        player = subprocess.run(
            [sys.executable, "-m", "guard_ros.bag_player", str(EPISODE), "--clock",
             "--wait-for-subscribers", "10", "--ros-args",
             "-r", f"/camera/image_raw:={ns}/camera/image_raw",
             "-r", f"/guard/proposals:={ns}/guard/proposals"],
            env=ros_graph["env"], stdout=out, stderr=subprocess.STDOUT, timeout=60,
        )
    assert player.returncode == 0, log.read_text()
    assert "played 18 messages" in log.read_text()

    def got_all() -> bool:
        return {d.proposal_id for d in decisions} >= set(EXPECTED)

    assert probe.wait(got_all, 15.0), (
        f"decisions: {[(d.proposal_id, d.status) for d in decisions]}\n{node.log()}")
    for pid, (verdict, status) in EXPECTED.items():
        matching = [d for d in decisions if d.proposal_id == pid]
        assert len(matching) == 1, matching
        assert (matching[0].verdict, matching[0].status) == (VERDICTS[verdict], status), pid
    # Judged against bag-time frames: stamps from the recording, not from the wall clock.
    judged = [d for d in decisions if d.status == "ok"]
    assert judged and all(1_700_000_000 <= d.frame_stamp.sec <= 1_700_000_002 for d in judged)

    relayed = {"bag-cup", "bag-drawer"}
    assert probe.wait(lambda: {p.id for p in approved} >= relayed, 5.0)
    assert {p.id for p in approved} == relayed
