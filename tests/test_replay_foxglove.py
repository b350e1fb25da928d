"""`guard replay --write-mcap`: the verdict MCAP read back with the mcap reader (and its own ROS 2
decoder) and with rosbags, checked against the foxglove_msgs schema, the episode and the decisions.

The README's picture of an annotated frame is drawn by `guard.replay.foxglove.render` from the
MCAP's own annotation data; regenerate it when the annotations or the example change:

    python tests/test_replay_foxglove.py --regenerate     # docs/img/foxglove_verdicts.png
"""

from __future__ import annotations

import io
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script to regenerate: make `guard` importable
    sys.path.insert(0, str(ROOT))

from guard.config import load_config  # noqa: E402
from guard.core import Guard  # noqa: E402
from guard.types import Verdict  # noqa: E402

pytest.importorskip("rosbags")
pytest.importorskip("mcap_ros2")

from guard.replay.foxglove import (  # noqa: E402
    ANNOTATIONS_TOPIC,
    DECISIONS_TOPIC,
    IMAGE_ANNOTATIONS,
    MCAP_FILE,
    VERDICT_RGBA,
    render,
    typestore,
)
from guard.replay.runner import replay  # noqa: E402
from guard.replay.writer import BagFrame, BagProposal, write_bag  # noqa: E402

EXAMPLE_MCAP = ROOT / "examples" / "world_episode.mcap"
EXAMPLE_JSONL = ROOT / "examples" / "world_episode" / "episode.jsonl"
EXAMPLE_CONFIG = ROOT / "examples" / "replay_scripted.yaml"
README_PNG = ROOT / "docs" / "img" / "foxglove_verdicts.png"
README_SCALE = 4  # the example's frames are small: drawn 4x, as a Foxglove panel would
IMAGE_TOPIC, PROPOSAL_TOPIC = "/camera/image_raw", "/guard/proposals"
# The published foxglove_msgs fields (name: type) Foxglove's image panel reads.
PUBLISHED_FIELDS = {
    "foxglove_msgs/msg/ImageAnnotations": {
        "circles": "foxglove_msgs/CircleAnnotation[]",
        "points": "foxglove_msgs/PointsAnnotation[]", "texts": "foxglove_msgs/TextAnnotation[]"},
    "foxglove_msgs/PointsAnnotation": {
        "timestamp": "builtin_interfaces/Time", "type": "uint8",
        "points": "foxglove_msgs/Point2[]",
        "outline_color": "foxglove_msgs/Color", "outline_colors": "foxglove_msgs/Color[]",
        "fill_color": "foxglove_msgs/Color", "thickness": "float64"},
    "foxglove_msgs/TextAnnotation": {
        "timestamp": "builtin_interfaces/Time", "position": "foxglove_msgs/Point2",
        "text": "string", "font_size": "float64", "text_color": "foxglove_msgs/Color",
        "background_color": "foxglove_msgs/Color"},
    "foxglove_msgs/Point2": {"x": "float64", "y": "float64"},
    "foxglove_msgs/Color": {"r": "float64", "g": "float64", "b": "float64", "a": "float64"},
}


@pytest.fixture
def example_guard(tmp_path):
    config = load_config(EXAMPLE_CONFIG).with_overrides(
        **{"audit.path": str(tmp_path / "audit.jsonl")})
    with Guard(config) as guard:
        yield guard


def read_mcap(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every message per topic, decoded by the mcap library's own ROS 2 decoder from the
    definitions stored in the file (not from ours)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    topics: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with path.open("rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        header = reader.get_header()
        assert header.profile == "ros2"
        for schema, channel, message, decoded in reader.iter_decoded_messages(
                log_time_order=True):
            assert schema is not None and schema.encoding == "ros2msg"
            assert channel.message_encoding == "cdr"
            topics[channel.topic].append({"schema": schema, "log_time": message.log_time,
                                          "data": message.data, "msg": decoded})
    return dict(topics)


def raw_messages(path: Path, topics: set[str]) -> list[tuple[str, int, bytes]]:
    from mcap.reader import make_reader

    with path.open("rb") as fh:
        return [(c.topic, m.log_time, m.data)
                for _, c, m in make_reader(fh).iter_messages(log_time_order=True)
                if c.topic in topics]


def schema_fields(text: str) -> dict[str, dict[str, str]]:
    """name: {field: type} of each message in a ros2msg definition (constants left out)."""
    out: dict[str, dict[str, str]] = {}
    name = IMAGE_ANNOTATIONS
    for block in text.split("=" * 80):
        fields = {}
        for line in block.strip().splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("MSG: "):
                name = line[5:]
            elif line and "=" not in line:
                kind, field = line.split()[:2]
                fields[field] = kind
        out[name] = fields
    return out


def stamp_ns(t: Any) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def image_size(msg: Any) -> tuple[int, int]:
    """(width, height) of an Image or CompressedImage message."""
    if hasattr(msg, "width"):
        return int(msg.width), int(msg.height)
    from PIL import Image

    with Image.open(io.BytesIO(bytes(msg.data))) as im:
        return im.size


def check_annotations(topics: dict[str, list[dict[str, Any]]],
                      decisions: list[dict[str, Any]]) -> None:
    """Each annotation set: valid against the published schema, stamped with the header stamp
    of the image it was logged with, outlined in its most restrictive verdict's colour, one
    text line (verdict, risk, first hazard) per decision made on that frame."""
    images = {m["log_time"]: m["msg"] for m in topics[IMAGE_TOPIC]}
    by_frame: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in decisions:
        [frame] = d["frames"]
        by_frame[round(frame["t"] * 1e9)].append(d)
    annotations = topics[ANNOTATIONS_TOPIC]
    assert len(annotations) == len(by_frame)  # one annotation set per judged frame
    published = schema_fields(annotations[0]["schema"].data.decode())
    for name, fields in PUBLISHED_FIELDS.items():
        assert published[name] == fields, name
    for a in annotations:
        msg, t = a["msg"], a["log_time"]
        image = images[t]  # logged with the frame it judged
        on_frame = by_frame[t]
        width, height = image_size(image)
        assert not msg.circles and len(msg.points) == 1 and len(msg.texts) >= len(on_frame)
        [outline] = msg.points
        worst = Verdict.most_restrictive(*(Verdict(d["verdict"]) for d in on_frame))
        assert outline.type == 2 and len(outline.points) == 4 and outline.thickness > 0
        c = outline.outline_color
        assert (c.r, c.g, c.b, c.a) == VERDICT_RGBA[worst]
        # each decision's line, wrapped: verdict, risk, first hazard, in order
        shown = " ".join(x.text for x in msg.texts)
        starts = [shown.index(f"{d['verdict'].upper()} risk {d['risk']:.2f}") for d in on_frame]
        assert starts == sorted(starts)
        for d in on_frame:
            if d["hazards"]:
                assert d["hazards"][0]["description"][:20] in shown
        for text in msg.texts:
            # Foxglove draws an annotation on the image whose header stamp it carries
            assert stamp_ns(text.timestamp) == stamp_ns(image.header.stamp)
            assert 0 < text.font_size and 0 <= text.position.y <= height
            for col in (text.text_color, text.background_color):
                assert all(0.0 <= v <= 1.0 for v in (col.r, col.g, col.b, col.a))
        assert stamp_ns(outline.timestamp) == stamp_ns(image.header.stamp)
        assert all(0 <= p.x <= width and 0 <= p.y <= height for p in outline.points)


def test_verdict_mcap_of_the_committed_episode(example_guard, tmp_path):
    out = tmp_path / "out"
    result = replay(EXAMPLE_MCAP, out, guard=example_guard, progress=False, write_mcap=True)
    path = out / MCAP_FILE
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    topics = read_mcap(path)
    assert {k: len(v) for k, v in topics.items()} == {
        IMAGE_TOPIC: 48, PROPOSAL_TOPIC: 24, DECISIONS_TOPIC: 24, ANNOTATIONS_TOPIC: 24}
    assert result.summary["mcap"] == {
        "path": str(path), "frames": 48, "proposals": 24, "decisions": 24, "annotations": 24,
        "skipped": [], "n_skipped": 0}
    # the episode's own streams, byte for byte, at their recorded times
    streams = {IMAGE_TOPIC, PROPOSAL_TOPIC}
    assert raw_messages(path, streams) == raw_messages(EXAMPLE_MCAP, streams)
    # one decision per proposal, at the proposal's time, as decisions.jsonl has it
    logged = [json.loads(m["msg"].data) for m in topics[DECISIONS_TOPIC]]
    assert logged == decisions
    proposal_times = [m["log_time"] for m in topics[PROPOSAL_TOPIC]]
    assert [m["log_time"] for m in topics[DECISIONS_TOPIC]] == proposal_times
    check_annotations(topics, decisions)
    # rosbags reads every channel too, and the file replays to the same verdicts
    from rosbags.highlevel import AnyReader

    with AnyReader([path], default_typestore=typestore()) as reader:
        n = sum(1 for c, _, raw in reader.messages() if reader.deserialize(raw, c.msgtype))
    assert n == 48 + 24 + 24 + 24
    again = replay(path, tmp_path / "again", guard=example_guard, progress=False)
    assert [j.decision.verdict for j in again.judged] == [d["verdict"] for d in decisions]


def test_verdict_mcap_of_a_jsonl_episode_from_the_cli(tmp_path, capsys):
    import argparse

    from guard.cli import replay as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "out"
    rc = cli.run(parser.parse_args([
        str(EXAMPLE_JSONL), "--out", str(out), "--config", str(EXAMPLE_CONFIG), "--write-mcap",
        "--no-progress"]))
    assert rc == 0
    assert "annotated frames" in capsys.readouterr().out
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    topics = read_mcap(out / MCAP_FILE)
    assert {k: len(v) for k, v in topics.items()} == {
        IMAGE_TOPIC: 48, PROPOSAL_TOPIC: 24, DECISIONS_TOPIC: 24, ANNOTATIONS_TOPIC: 24}
    lines = [json.loads(x) for x in EXAMPLE_JSONL.read_text().splitlines()]
    frames = [x for x in lines if "frame" in x]
    for m, line in zip(topics[IMAGE_TOPIC], frames, strict=True):
        # the frame file itself, stamped with its episode time
        assert m["schema"].name == "sensor_msgs/msg/CompressedImage"
        assert bytes(m["msg"].data) == (EXAMPLE_JSONL.parent / line["frame"]).read_bytes()
        assert stamp_ns(m["msg"].header.stamp) == m["log_time"] == round(line["t"] * 1e9)
    proposals = [json.loads(m["msg"].data) for m in topics[PROPOSAL_TOPIC]]
    assert [p["id"] for p in proposals] == [d["proposal"]["id"] for d in decisions]
    assert [p["label"] for p in proposals] == [d["label"] for d in decisions]
    assert [json.loads(m["msg"].data)["id"] for m in topics[DECISIONS_TOPIC]] == [
        d["id"] for d in decisions]
    check_annotations(topics, decisions)


def test_one_annotation_set_per_frame_stamped_with_its_header_stamp(config, tmp_path):
    """Two proposals on one frame share one annotation set (both lines, the outline in the
    most restrictive verdict's colour); its stamp is the header stamp, not the bag time."""
    from guard.backends.scripted import ScriptedBackend
    from guard.config import ScriptedOptions, ScriptedStep

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    bag = write_bag(tmp_path / "ep.mcap", [
        BagFrame(t=10.0, image=image, encoding="rgb8", stamp=9.987654321),
        BagProposal(t=10.2, proposal={"id": "a", "name": "wave", "description": "wave"}),
        BagProposal(t=10.3, proposal={"id": "b", "name": "stove_on", "description": "stove"}),
        BagFrame(t=11.0, image=image, encoding="rgb8", stamp=10.987654321),
        BagProposal(t=11.2, proposal={"id": "c", "name": "wave", "description": "wave"}),
    ], bare=True)
    options = ScriptedOptions(
        by_action={"stove": ScriptedStep(
            text="VETO\nrisk: 0.9\nhazard: fire | hot | burns | 0.9")},
        responses=[ScriptedStep(text="ALLOW\nrisk: 0.05")])
    with Guard(config, backend=ScriptedBackend(options)) as guard:
        replay(bag, tmp_path / "out", guard=guard, progress=False, write_mcap=True)
    topics = read_mcap(tmp_path / "out" / MCAP_FILE)
    decisions = [json.loads(m["msg"].data) for m in topics[DECISIONS_TOPIC]]
    assert [d["verdict"] for d in decisions] == ["allow", "veto", "allow"]
    first, second = topics[ANNOTATIONS_TOPIC]
    assert [x.text for x in first["msg"].texts] == ["ALLOW risk 0.05", "VETO risk 0.90:",
                                                   "fire: hot"]
    c = first["msg"].points[0].outline_color
    assert (c.r, c.g, c.b, c.a) == VERDICT_RGBA[Verdict.VETO]
    assert [x.text for x in second["msg"].texts] == ["ALLOW risk 0.05"]
    assert first["log_time"] == 10_000_000_000
    assert stamp_ns(first["msg"].points[0].timestamp) == 9_987_654_321
    assert stamp_ns(second["msg"].texts[0].timestamp) == 10_987_654_321
    check_annotations(topics, decisions)


def annotated_frame(path: Path, verdict: str = "veto") -> tuple[np.ndarray, Any]:
    """The first frame judged `verdict` in a verdict MCAP, decoded, and its annotations (as
    rosbags reads them), both from the file alone."""
    from PIL import Image
    from rosbags.highlevel import AnyReader

    images: dict[int, np.ndarray] = {}
    with AnyReader([path], default_typestore=typestore()) as reader:
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == IMAGE_TOPIC:
                images[t] = np.asarray(Image.open(io.BytesIO(bytes(msg.data))).convert("RGB"))
            elif conn.topic == ANNOTATIONS_TOPIC and msg.texts[0].text.lower().startswith(
                    verdict):
                return images[t], msg
    raise AssertionError(f"no {verdict} annotation in {path}")


def test_render_draws_the_annotations_over_the_frame(example_guard, tmp_path):
    replay(EXAMPLE_MCAP, tmp_path / "out", guard=example_guard, progress=False, write_mcap=True)
    image, annotations = annotated_frame(tmp_path / "out" / MCAP_FILE)
    drawn = np.asarray(render(image, annotations))
    assert drawn.shape == image.shape
    h, w = image.shape[:2]
    red = np.array([round(v * 255) for v in VERDICT_RGBA[Verdict.VETO][:3]])
    # the outline runs along every edge (within its thickness); the middle is untouched
    band = round(annotations.points[0].thickness) + 1
    for edge in (drawn[:band, w // 2], drawn[-band:, w // 2], drawn[h // 2, :band],
                 drawn[h // 2, -band:]):
        assert (np.abs(edge.astype(int) - red).max(axis=1) <= 2).any()
    assert np.array_equal(drawn[h // 2, w // 2], image[h // 2, w // 2])
    assert not np.array_equal(drawn[h // 8, w // 4], image[h // 8, w // 4])  # the text line
    # the README's picture is this rendering (regenerate: see the module docstring)
    from PIL import Image

    with Image.open(README_PNG) as committed:
        assert committed.size == (w * README_SCALE, h * README_SCALE)


def regenerate() -> None:
    import tempfile

    config = load_config(EXAMPLE_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        config = config.with_overrides(**{"audit.path": str(Path(tmp) / "audit.jsonl")})
        with Guard(config) as guard:
            replay(EXAMPLE_MCAP, Path(tmp) / "out", guard=guard, progress=False,
                   write_mcap=True)
        image, annotations = annotated_frame(Path(tmp) / "out" / MCAP_FILE)
        README_PNG.parent.mkdir(parents=True, exist_ok=True)
        render(image, annotations, scale=README_SCALE).save(README_PNG, optimize=True)
    print(f"wrote {README_PNG}")


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        regenerate()
