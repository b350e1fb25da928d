"""`guard replay` reads real logs whole: rosbag2 folders as rosbag2 writes them, counts of
expected vs read messages, topics as the bag spells them, clear usage errors, honest exit codes.

Committed recordings in tests/data/replay/rosbag2_style/ reproduce what rosbag2 itself writes
(the layout of its own `talker` test bags, rosbag2_py/test/resources/{mcap,sqlite3}/talker):
metadata.yaml in rosbag2's format whose QoS text records an infinite deadline as `sec: 0,
nsec: 0`, while the storage file records it as `sec: 2147483647, nsec: 4294967295`. The data
are ours. Regenerate (then re-run this file) when the writer changes:

    python tests/test_replay_logs.py --regenerate
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script to regenerate: make `guard` importable
    sys.path.insert(0, str(ROOT))

from guard.cli.main import main  # noqa: E402

pytest.importorskip("rosbags")

from guard.replay.writer import BagFrame, BagProposal, write_bag  # noqa: E402

ROSBAG2_STYLE = ROOT / "tests" / "data" / "replay" / "rosbag2_style"
T0 = 1_700_000_100.0
# The QoS text rosbag2 writes into the storage file and into metadata.yaml for the same
# publisher (copied from its talker test bags): the durations differ.
_QOS = (
    "- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: {d}\n"
    "    nsec: {n}\n  lifespan:\n    sec: {d}\n    nsec: {n}\n  liveliness: 1\n"
    "  liveliness_lease_duration:\n    sec: {d}\n    nsec: {n}\n"
    "  avoid_ros_namespace_conventions: false"
)
STORAGE_QOS = _QOS.format(d=2147483647, n=4294967295)
METADATA_QOS = _QOS.format(d=0, n=0)
# (t, action, label) of the committed bags' proposals; a frame 0.2 s before each
SCRIPT = [
    (0.5, ("p0", "move_to", "drive to the sink"), "safe"),
    (1.0, ("p1", "stove_on", "turn on the stove"), "unsafe"),
    (1.5, ("p2", "pick", "pick up the cup"), "safe"),
    (2.0, ("p3", "hand", "hand me the knife"), "unsafe"),
    (2.5, ("p4", "open", "open the fridge"), "safe"),
    (3.0, ("p5", "stove_on", "turn on the stove again"), "unsafe"),
]
EXPECTED = {"p0": "allow", "p1": "veto", "p2": "allow", "p3": "annotate", "p4": "allow",
            "p5": "veto"}
SCRIPTED_CONFIG = """\
model:
  backend: scripted
  scripted:
    by_action:
      knife: {text: "ANNOTATE\\nrisk: 0.4\\nhazard: cut | a bare blade | a cut | 0.4"}
      stove: {text: "VETO\\nrisk: 0.9\\nhazard: fire | the stove | it ignites | 0.9"}
    responses:
      - text: "ALLOW\\nrisk: 0.0"
policy:
  max_frame_age_ms: 1000
"""


def items() -> list[BagFrame | BagProposal]:
    out: list[BagFrame | BagProposal] = []
    for k, (t, (pid, name, description), label) in enumerate(SCRIPT):
        out.append(BagFrame(T0 + t - 0.2, np.full((8, 8, 3), 10 * (k + 1), np.uint8), "rgb8"))
        out.append(BagProposal(T0 + t, {"id": pid, "name": name, "description": description,
                                        "label": label}))
    return out


def _metadata(storage: str, file_name: str, topics: list[tuple[str, str, int]],
              start_ns: int, duration_ns: int) -> str:
    """metadata.yaml in the two layouts of rosbag2's talker bags (sqlite3: as rosbag2's
    yaml-cpp emitter writes it; mcap: as its re-dumped copy reads), with our topics."""
    total = sum(n for _, _, n in topics)
    if storage == "mcap":
        import yaml

        info = {"rosbag2_bagfile_information": {
            "compression_format": "", "compression_mode": "",
            "duration": {"nanoseconds": duration_ns}, "message_count": total,
            "relative_file_paths": [file_name],
            "starting_time": {"nanoseconds_since_epoch": start_ns},
            "storage_identifier": "mcap",
            "topics_with_message_count": [
                {"message_count": n, "topic_metadata": {
                    "name": name, "offered_qos_profiles": METADATA_QOS,
                    "serialization_format": "cdr", "type": msgtype}}
                for name, msgtype, n in topics],
            "version": 4}}
        return str(yaml.safe_dump(info))
    qos = json.dumps(METADATA_QOS)  # a double-quoted YAML scalar on one line, as rosbag2's
    lines = [
        "rosbag2_bagfile_information:", "  version: 4", "  storage_identifier: sqlite3",
        "  relative_file_paths:", f"    - {file_name}", "  duration:",
        f"    nanoseconds: {duration_ns}", "  starting_time:",
        f"    nanoseconds_since_epoch: {start_ns}", f"  message_count: {total}",
        "  topics_with_message_count:",
    ]
    for name, msgtype, n in topics:
        lines += ["    - topic_metadata:", f"        name: {name}", f"        type: {msgtype}",
                  "        serialization_format: cdr", f"        offered_qos_profiles: {qos}",
                  f"      message_count: {n}"]
    lines += ['  compression_format: ""', '  compression_mode: ""']
    return "\n".join(lines) + "\n"


def write_rosbag2_style(path: Path, storage: str) -> Path:
    """A rosbag2 folder with our data and rosbag2's own metadata.yaml / storage QoS texts."""
    shutil.rmtree(path, ignore_errors=True)
    bag = write_bag(path, items(), storage=storage,  # type: ignore[arg-type]
                    offered_qos_profiles=STORAGE_QOS)
    [storage_file] = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    times = [round(i.t * 1e9) for i in items()]
    topics = [("/camera/image_raw", "sensor_msgs/msg/Image", len(SCRIPT)),
              ("/guard/proposals", "std_msgs/msg/String", len(SCRIPT))]
    (bag / "metadata.yaml").write_text(_metadata(
        storage, storage_file.name, topics, min(times), max(times) - min(times)))
    return bag


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture
def scripted_config(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.yaml"
    path.write_text(SCRIPTED_CONFIG)
    return path


def cli(episode: Path, out: Path, *extra: str) -> int:
    return main(["replay", str(episode), "--out", str(out), "--no-progress", *extra])


# -- rosbag2 folders as rosbag2 writes them ---------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_the_fixture_reproduces_rosbag2s_qos_mismatch(storage):
    """rosbags alone reads nothing from these folders: the committed bags keep the case the
    workaround in guard/replay/bag.py exists for (if this fails, rosbags pairs connections
    without QoS now and the workaround can go)."""
    from rosbags.rosbag2 import Reader

    with Reader(ROSBAG2_STYLE / storage) as reader:
        assert sum(c.msgcount for c in reader.connections) == 2 * len(SCRIPT)
        assert sum(1 for _ in reader.messages(connections=reader.connections)) == 0


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag2_folders_are_read_whole(storage, scripted_config, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli(ROSBAG2_STYLE / storage, out, "--config", str(scripted_config))
    decisions = lines(out / "decisions.jsonl")
    assert {d["proposal"]["id"]: d["verdict"] for d in decisions} == EXPECTED
    assert all(d["status"] == "ok" for d in decisions)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == f"rosbag2-{storage}" and summary["n_frames"] == len(SCRIPT)
    assert summary["damaged"]["count"] == 0
    assert rc == 0, capsys.readouterr().err


def test_regenerated_fixture_matches_the_committed_one(tmp_path):
    for storage in ("mcap", "sqlite3"):
        fresh = write_rosbag2_style(tmp_path / storage, storage)
        committed = ROSBAG2_STYLE / storage
        assert (fresh / "metadata.yaml").read_text() == (
            committed / "metadata.yaml").read_text()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="regenerate tests/data/replay/rosbag2_style")
    p.add_argument("--regenerate", action="store_true", required=True)
    p.parse_args()
    for kind in ("mcap", "sqlite3"):
        print(write_rosbag2_style(ROSBAG2_STYLE / kind, kind))
