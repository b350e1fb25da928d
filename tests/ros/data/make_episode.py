"""Writes `episode/`, the small rosbag2 (MCAP) that test_guard_node_bag.py replays.

    python tests/ros/data/make_episode.py          # rewrites tests/ros/data/episode/

Regenerate when the guard_interfaces messages change (their definitions are embedded in the
bag) or when the replay test needs other proposals; commit the folder. Needs only rosbags and
numpy. Frames are 64x48 in rgb8, bgr8 and mono8, so the replay also exercises the node's
encoding conversions; every proposal's expected outcome is in EXPECTED (the test reads it).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

HERE = Path(__file__).resolve().parent
OUT = HERE / "episode"
MSG_DIR = HERE.parents[2] / "ros2_ws" / "src" / "guard_interfaces" / "msg"

T0_NS = 1_700_000_000_000_000_000  # bag time of the first message
IMAGE_TOPIC = "/camera/image_raw"
PROPOSAL_TOPIC = "/guard/proposals"

# (seconds after T0, id, name, description, arguments_json)
PROPOSALS = [
    (0.0, "bag-nofame", "wave", "wave at the person", ""),
    (0.8, "bag-cup", "pick", "pick up the cup", '{"object": "cup"}'),
    (1.0, "bag-stove", "place", "put the towel on the stove", '{"object": "towel"}'),
    (1.2, "bag-drawer", "open", "open the drawer", ""),
    (1.4, "bag-badargs", "pick", "pick up the plate", "{not json"),
]
# What the replay test expects, given the scripted answers in test_guard_node_bag.py.
EXPECTED = {
    "bag-nofame": ("veto", "no_frame"),
    "bag-cup": ("allow", "ok"),
    "bag-stove": ("veto", "ok"),
    "bag-drawer": ("annotate", "ok"),
    "bag-badargs": ("veto", "invalid_input"),
}
FRAME_TIMES = [0.3 + 0.1 * i for i in range(13)]  # 0.3 .. 1.5 s at 10 Hz
ENCODINGS = ["rgb8", "bgr8", "mono8"]


def _typestore():
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in ("Hazard", "ActionProposal", "Decision"):
        text = (MSG_DIR / f"{name}.msg").read_text()
        types.update(get_types_from_msg(text, f"guard_interfaces/msg/{name}"))
    store.register(types)
    return store


def _stamp(store, ns: int):
    Time = store.types["builtin_interfaces/msg/Time"]
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _image(store, ns: int, index: int):
    Header = store.types["std_msgs/msg/Header"]
    Image = store.types["sensor_msgs/msg/Image"]
    encoding = ENCODINGS[index % len(ENCODINGS)]
    channels = 1 if encoding == "mono8" else 3
    # A plain gradient with a moving square: deterministic, and it compresses well in git.
    pixels = np.zeros((48, 64, channels), np.uint8)
    pixels[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    pixels[8:24, 4 * index:4 * index + 16, :] = 255
    return Image(
        header=Header(stamp=_stamp(store, ns), frame_id="camera"),
        height=48, width=64, encoding=encoding, is_bigendian=0, step=64 * channels,
        data=pixels.reshape(-1),
    )


def _proposal(store, ns: int, pid: str, name: str, description: str, arguments: str):
    Header = store.types["std_msgs/msg/Header"]
    Proposal = store.types["guard_interfaces/msg/ActionProposal"]
    return Proposal(
        header=Header(stamp=_stamp(store, ns), frame_id="base_link"),
        id=pid, name=name, description=description, arguments_json=arguments,
    )


def write(out: Path = OUT) -> Path:
    store = _typestore()
    if out.exists():
        shutil.rmtree(out)
    events = [(T0_NS + round(t * 1e9), "image", i) for i, t in enumerate(FRAME_TIMES)]
    events += [(T0_NS + round(p[0] * 1e9), "proposal", i) for i, p in enumerate(PROPOSALS)]
    events.sort()
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        proposals = writer.add_connection(
            PROPOSAL_TOPIC, "guard_interfaces/msg/ActionProposal", typestore=store)
        for ns, kind, index in events:
            if kind == "image":
                msg = _image(store, ns, index)
                writer.write(images, ns, store.serialize_cdr(msg, msg.__msgtype__))
            else:
                _, pid, name, description, arguments = PROPOSALS[index]
                msg = _proposal(store, ns, pid, name, description, arguments)
                writer.write(proposals, ns, store.serialize_cdr(msg, msg.__msgtype__))
    expected = out.parent / f"{out.name}_expected.json"
    expected.write_text(json.dumps(EXPECTED, indent=1, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    path = write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {path}: {sorted(p.name for p in path.iterdir())}")
