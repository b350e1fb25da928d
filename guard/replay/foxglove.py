"""Verdicts in Foxglove: an MCAP of a replayed episode with its decisions drawn over its frames.

    guard replay examples/world_episode.mcap --out /tmp/replay --write-mcap \
        --config examples/replay_scripted.yaml
    # then open /tmp/replay/episode_with_verdicts.mcap in Foxglove: an Image panel on the
    # camera topic, with /guard/annotations ticked under "Image annotations"

The file is a ROS 2 MCAP (profile ros2, CDR messages) holding:

- the episode's own camera and proposal streams, copied byte for byte from a bag (a JSONL
  episode's frames become `sensor_msgs/msg/CompressedImage` on /camera/image_raw and its
  proposals `std_msgs/msg/String` JSON on /guard/proposals, as `guard replay` reads them);
- `/guard/decisions` (`std_msgs/msg/String`): each decision as the JSON line decisions.jsonl
  holds, at the proposal's time;
- `/guard/annotations` (`foxglove_msgs/msg/ImageAnnotations`): one message per judged frame, at
  that frame's time, stamped with the frame's own header stamp (Foxglove overlays annotations on
  the image whose stamp they carry): an outline of the frame in the colour of the most
  restrictive verdict on it (red veto, amber annotate, green allow) and one line per decision
  on it: verdict, risk and the first hazard.

Everything is ROS 2, not JSON channels: rosbags (and `guard replay` itself) cannot open an MCAP
holding a jsonschema-encoded channel (rosbags 0.11 has no reader for that schema encoding). The
decision is a String of JSON rather than guard_interfaces/Decision so the file does not depend
on a ROS message that is still growing fields.
"""

from __future__ import annotations

import heapq
import io
import json
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from guard.replay import msgs
from guard.replay.bag import DEFAULT_IMAGE_TOPIC, DEFAULT_PROPOSAL_TOPIC
from guard.types import Decision, Verdict

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from guard.replay.episode import Episode, Event
    from guard.replay.report import Judged

MCAP_FILE = "episode_with_verdicts.mcap"
DECISIONS_TOPIC = "/guard/decisions"
ANNOTATIONS_TOPIC = "/guard/annotations"
IMAGE_ANNOTATIONS = "foxglove_msgs/msg/ImageAnnotations"

# The foxglove_msgs ROS 2 messages the annotations use, field for field as published by
# Foxglove (github.com/foxglove/schemas, ros_foxglove_msgs/ros2/*.msg; the foxglove_msgs
# package of ROS 2 Humble/Jazzy). Foxglove reads the definition stored in the file, so these
# must keep the published names and types.
FOXGLOVE_MSGS = {
    "foxglove_msgs/msg/Color": """\
float64 r
float64 g
float64 b
float64 a
""",
    "foxglove_msgs/msg/Point2": """\
float64 x
float64 y
""",
    "foxglove_msgs/msg/CircleAnnotation": """\
builtin_interfaces/Time timestamp
foxglove_msgs/Point2 position
float64 diameter
float64 thickness
foxglove_msgs/Color fill_color
foxglove_msgs/Color outline_color
""",
    "foxglove_msgs/msg/PointsAnnotation": """\
builtin_interfaces/Time timestamp
uint8 UNKNOWN=0
uint8 POINTS=1
uint8 LINE_LOOP=2
uint8 LINE_STRIP=3
uint8 LINE_LIST=4
uint8 type
foxglove_msgs/Point2[] points
foxglove_msgs/Color outline_color
foxglove_msgs/Color[] outline_colors
foxglove_msgs/Color fill_color
float64 thickness
""",
    "foxglove_msgs/msg/TextAnnotation": """\
builtin_interfaces/Time timestamp
foxglove_msgs/Point2 position
string text
float64 font_size
foxglove_msgs/Color text_color
foxglove_msgs/Color background_color
""",
    IMAGE_ANNOTATIONS: """\
foxglove_msgs/CircleAnnotation[] circles
foxglove_msgs/PointsAnnotation[] points
foxglove_msgs/TextAnnotation[] texts
""",
}
LINE_LOOP = 2

# Verdict colours, RGBA in 0..1: red veto, amber annotate, green allow.
VERDICT_RGBA = {
    Verdict.VETO: (0.86, 0.13, 0.13, 1.0),
    Verdict.ANNOTATE: (1.0, 0.70, 0.0, 1.0),
    Verdict.ALLOW: (0.13, 0.70, 0.25, 1.0),
}
WHITE = (1.0, 1.0, 1.0, 1.0)
TEXT_BACKGROUND_ALPHA = 0.75
# Characters of a decision's text; Foxglove draws one line per TextAnnotation.
MAX_TEXT_CHARS = 90
MAX_LINES = 3
# Width of a character as a share of the font size (sans-serif, for wrapping).
CHAR_WIDTH = 0.6


@lru_cache(maxsize=1)
def typestore() -> Any:
    """Replay's typestore (Jazzy + ActionProposal) plus the foxglove_msgs annotation types."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg(msgs.ACTION_PROPOSAL_MSG, msgs.ACTION_PROPOSAL))
    for name, text in FOXGLOVE_MSGS.items():
        store.register(get_types_from_msg(text, name))
    return store


# -- the annotations of one frame (pure) -----------------------------------------------------


def _color(rgba: tuple[float, float, float, float]) -> dict[str, float]:
    return dict(zip("rgba", rgba, strict=True))


def _time(ns: int) -> dict[str, int]:
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return {"sec": sec, "nanosec": nanosec}


def decision_line(decision: Decision) -> str:
    """One line for a decision: verdict, risk, the first hazard (and why a check did not run)."""
    line = f"{decision.verdict.value.upper()} risk {decision.risk:.2f}"
    if decision.status.value != "ok":
        line += f" [{decision.status.value}]"
    if decision.hazards:
        h = decision.hazards[0]
        line += f": {h.category}: {h.description}"
    elif decision.status.value != "ok" and decision.rationale:
        line += f": {decision.rationale}"
    line = " ".join(line.split())
    return line if len(line) <= MAX_TEXT_CHARS else line[: MAX_TEXT_CHARS - 1] + "\u2026"


def frame_annotations(
    decisions: Sequence[Decision], stamp_ns: int, width: int, height: int
) -> dict[str, Any]:
    """The `foxglove_msgs/msg/ImageAnnotations` (as a dict) for one judged frame.

    Args:
        decisions: Every decision made on this frame, in order.
        stamp_ns: The frame's header stamp; every annotation carries it, so Foxglove draws them
            on this frame.
        width: The frame's width in pixels.
        height: The frame's height in pixels.

    Returns:
        An outline of the frame in the colour of the most restrictive verdict (most
        restrictive wins, as in the policy) and each decision's line (wrapped to the frame's
        width), top left, on the colour of its verdict.
    """
    stamp = _time(stamp_ns)
    worst = Verdict.most_restrictive(*(d.verdict for d in decisions))
    thickness = float(max(2, round(min(width, height) / 60)))
    inset = thickness / 2  # the stroke stays inside the image
    corners = [(inset, inset), (width - inset, inset), (width - inset, height - inset),
               (inset, height - inset)]
    outline = {
        "timestamp": stamp, "type": LINE_LOOP,
        "points": [{"x": float(x), "y": float(y)} for x, y in corners],
        "outline_color": _color(VERDICT_RGBA[worst]), "outline_colors": [],
        "fill_color": _color((0.0, 0.0, 0.0, 0.0)), "thickness": thickness,
    }
    # Font size and line width are in image pixels (Foxglove scales them with the image): a
    # line fits the frame's width, wrapped over up to MAX_LINES lines per decision.
    font_size = float(min(48, max(6, round(height / 16))))
    chars = max(12, int((width - 4 * thickness) / (CHAR_WIDTH * font_size)))
    texts: list[dict[str, Any]] = []
    for d in decisions:
        r, g, b, _ = VERDICT_RGBA[d.verdict]
        wrapped = textwrap.wrap(decision_line(d), chars)
        if len(wrapped) > MAX_LINES:
            wrapped = [*wrapped[: MAX_LINES - 1], wrapped[MAX_LINES - 1][: chars - 1] + "\u2026"]
        for text in wrapped:
            texts.append({
                "timestamp": stamp,
                # bottom-left of the line, below the outline
                "position": {"x": 2 * thickness,
                             "y": 2 * thickness + font_size * 1.25 * (len(texts) + 1)},
                "text": text, "font_size": font_size, "text_color": _color(WHITE),
                "background_color": _color((r, g, b, TEXT_BACKGROUND_ALPHA)),
            })
    return {"circles": [], "points": [outline], "texts": texts}


def to_message(store: Any, data: dict[str, Any]) -> Any:
    """The rosbags message of an ImageAnnotations dict (what `frame_annotations` returns)."""
    t = store.types

    def time(v: dict[str, int]) -> Any:
        return t["builtin_interfaces/msg/Time"](sec=v["sec"], nanosec=v["nanosec"])

    def color(v: dict[str, float]) -> Any:
        return t["foxglove_msgs/msg/Color"](**v)

    def point(v: dict[str, float]) -> Any:
        return t["foxglove_msgs/msg/Point2"](**v)

    points = [
        t["foxglove_msgs/msg/PointsAnnotation"](
            timestamp=time(p["timestamp"]), type=p["type"],
            points=[point(q) for q in p["points"]], outline_color=color(p["outline_color"]),
            outline_colors=[color(c) for c in p["outline_colors"]],
            fill_color=color(p["fill_color"]), thickness=p["thickness"],
        )
        for p in data["points"]
    ]
    texts = [
        t["foxglove_msgs/msg/TextAnnotation"](
            timestamp=time(x["timestamp"]), position=point(x["position"]), text=x["text"],
            font_size=x["font_size"], text_color=color(x["text_color"]),
            background_color=color(x["background_color"]),
        )
        for x in data["texts"]
    ]
    return t[IMAGE_ANNOTATIONS](circles=[], points=points, texts=texts)


# -- drawing them without Foxglove (README image, tests) -------------------------------------


def render(image: np.ndarray, annotations: Any, scale: float = 1.0) -> PILImage.Image:
    """Draw an ImageAnnotations message (rosbags object) over an RGB frame as Foxglove would:
    LINE_LOOP outlines and text lines on their background, positions in image pixels.

    Args:
        image: The frame, RGB uint8.
        annotations: The frame's `foxglove_msgs/msg/ImageAnnotations`.
        scale: Drawn this many times the frame's size (annotations scale with it, as they do
            on a Foxglove panel showing the frame larger than it is).
    """
    from PIL import Image, ImageDraw, ImageFont

    def rgba(c: Any) -> tuple[int, int, int, int]:
        return tuple(round(v * 255) for v in (c.r, c.g, c.b, c.a))  # type: ignore[return-value]

    base = Image.fromarray(image).convert("RGBA")
    if scale != 1.0:
        size = (round(base.width * scale), round(base.height * scale))
        base = base.resize(size, Image.Resampling.LANCZOS)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for p in annotations.points:
        xy = [(q.x * scale, q.y * scale) for q in p.points]
        if p.type == LINE_LOOP and xy:
            draw.line([*xy, xy[0]], fill=rgba(p.outline_color),
                      width=max(1, round(p.thickness * scale)), joint="curve")
    for x in annotations.texts:
        size_px = x.font_size * scale
        font = ImageFont.load_default(size=size_px)
        _, top, right, bottom = draw.textbbox((0, 0), x.text, font=font)
        # the position is the text's bottom-left corner
        ox, oy = x.position.x * scale, x.position.y * scale - size_px
        draw.rectangle((ox - 2, oy + top - 2, ox + right + 2, oy + bottom + 2),
                       fill=rgba(x.background_color))
        draw.text((ox, oy), x.text, fill=rgba(x.text_color), font=font)
    return Image.alpha_composite(base, layer).convert("RGB")


# -- writing the file ------------------------------------------------------------------------


@dataclass
class McapCounts:
    """What went into the file, per kind (reported in summary.json under `mcap`)."""

    path: str
    frames: int = 0
    proposals: int = 0
    decisions: int = 0
    annotations: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "frames": self.frames, "proposals": self.proposals,
                "decisions": self.decisions, "annotations": self.annotations,
                "skipped": self.skipped[:20], "n_skipped": len(self.skipped)}


class _Channels:
    """MCAP schemas and channels, registered on first use."""

    def __init__(self, writer: Any, store: Any) -> None:
        self.writer, self.store = writer, store
        self.schemas: dict[tuple[str, str], int] = {}
        self.channels: dict[tuple[str, int], int] = {}
        self.sequence: dict[int, int] = {}

    def channel(self, topic: str, msgtype: str, definition: str = "") -> int:
        if not definition:
            definition, _ = self.store.generate_msgdef(msgtype, ros_version=2)
        key = (msgtype, definition)
        if key not in self.schemas:
            self.schemas[key] = self.writer.register_schema(
                name=msgtype, encoding="ros2msg", data=definition.encode())
        schema_id = self.schemas[key]
        if (topic, schema_id) not in self.channels:
            self.channels[topic, schema_id] = self.writer.register_channel(
                topic=topic, message_encoding="cdr", schema_id=schema_id,
                metadata={"offered_qos_profiles": ""})
        return self.channels[topic, schema_id]

    def write(self, channel_id: int, t_ns: int, data: bytes) -> None:
        seq = self.sequence.get(channel_id, 0)
        self.sequence[channel_id] = seq + 1
        self.writer.add_message(channel_id=channel_id, log_time=t_ns, publish_time=t_ns,
                                data=data, sequence=seq)


def _jsonl_frame(store: Any, event: Any, stamp_ns: int) -> bytes:
    """A JSONL frame as CompressedImage CDR: the file's bytes when it is JPEG or PNG, else
    the decoded pixels as PNG."""
    from PIL import Image

    data = event.file.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "").lower()
    if fmt not in ("jpeg", "png"):
        buf = io.BytesIO()
        Image.fromarray(event.pixels()).save(buf, format="PNG")
        data, fmt = buf.getvalue(), "png"
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
        frame_id="camera")
    msg = store.types[msgs.COMPRESSED_IMAGE](header=header, format=fmt,
                                             data=np.frombuffer(data, np.uint8))
    return bytes(store.serialize_cdr(msg, msgs.COMPRESSED_IMAGE))


def _proposal_json(event: Any) -> str:
    data = event.proposal.model_dump(mode="json", include={"id", "name", "description",
                                                           "arguments"})
    if event.label is not None:
        data["label"] = event.label
    return json.dumps(data, ensure_ascii=False)


def _overlays(judged: Sequence[Judged], t0_ns: int) -> Iterator[tuple[int, int, str, Any]]:
    """(log time, order, kind, payload) of every decision and of every judged frame's
    annotation set, in time order; annotations follow their frame (order 1)."""
    from guard.replay.report import decision_record

    by_frame: dict[tuple[str, int, int], list[Judged]] = {}
    for j in judged:
        if j.judged_frame is not None:
            f = j.judged_frame
            by_frame.setdefault((f["topic"], f["t_ns"], f["stamp_ns"]), []).append(j)
    items: list[tuple[int, int, str, Any]] = []
    for (_, t_ns, _), group in by_frame.items():
        items.append((t_ns, 1, "annotation", group))
    for j in judged:
        items.append((j.t_ns, 2, "decision", decision_record(j, t0_ns)))
    items.sort(key=lambda x: (x[0], x[1]))
    yield from items


def write_mcap(
    episode: Episode, judged: Sequence[Judged], path: str | Path, t0_ns: int = 0
) -> McapCounts:
    """Write the episode's streams, its decisions and their annotations to one MCAP.

    Args:
        episode: A freshly opened episode (its events are read once more here).
        judged: What the replay judged (`ReplayResult.judged`).
        path: The file to write (overwritten).
        t0_ns: The episode's first time, for the decisions' `t_rel`.

    Returns:
        Counts of what was written, and what was skipped and why (a message the episode
        recorded without a definition of its type, a frame file that cannot be read).
    """
    from mcap.writer import CompressionType, Writer

    store = typestore()
    out = Path(path)
    counts = McapCounts(str(out))
    jsonl = episode.format == "jsonl"
    with out.open("wb") as fh:
        writer = Writer(fh, compression=CompressionType.ZSTD)
        writer.start(profile="ros2", library="embodied-guard")
        ch = _Channels(writer, store)
        decisions_ch = ch.channel(DECISIONS_TOPIC, msgs.STRING)
        annotations_ch = ch.channel(ANNOTATIONS_TOPIC, IMAGE_ANNOTATIONS)

        def stream() -> Iterator[tuple[int, int, str, Any]]:
            for event in episode.events():
                yield (event.t_ns, 0, "event", event)

        merged = heapq.merge(stream(), _overlays(judged, t0_ns), key=lambda x: (x[0], x[1]))
        for t_ns, _, kind, payload in merged:
            if kind == "event":
                _write_event(ch, store, payload, jsonl, counts)
            elif kind == "decision":
                data = store.types[msgs.STRING](data=json.dumps(payload, ensure_ascii=False))
                ch.write(decisions_ch, t_ns, bytes(store.serialize_cdr(data, msgs.STRING)))
                counts.decisions += 1
            else:
                f = payload[0].judged_frame
                ann = frame_annotations([j.decision for j in payload], f["stamp_ns"],
                                        f["width"], f["height"])
                raw = store.serialize_cdr(to_message(store, ann), IMAGE_ANNOTATIONS)
                ch.write(annotations_ch, t_ns, bytes(raw))
                counts.annotations += 1
        writer.finish()  # type: ignore[no-untyped-call]
    return counts


def _write_event(ch: _Channels, store: Any, event: Event, jsonl: bool, counts: McapCounts) -> None:
    from guard.replay.episode import FrameEvent

    is_frame = isinstance(event, FrameEvent)
    where = f"{event.topic}@{event.t_ns / 1e9:.3f}"
    try:
        if event.recorded is not None:
            rec = event.recorded
            if not rec.definition and rec.msgtype not in store.types:
                counts.skipped.append(f"{where}: {rec.msgtype} has no definition to copy")
                return
            cid = ch.channel(event.topic, rec.msgtype, rec.definition)
            ch.write(cid, event.t_ns, rec.data)
        elif jsonl and is_frame:
            assert isinstance(event, FrameEvent)
            if event.file is None:
                counts.skipped.append(f"{where}: no frame file")
                return
            data = _jsonl_frame(store, event, event.t_ns)
            ch.write(ch.channel(DEFAULT_IMAGE_TOPIC, msgs.COMPRESSED_IMAGE), event.t_ns, data)
        elif jsonl:
            if event.error is not None:  # a line that was not a proposal: nothing to copy
                counts.skipped.append(f"{where}: {event.error}")
                return
            msg = store.types[msgs.STRING](data=_proposal_json(event))
            ch.write(ch.channel(DEFAULT_PROPOSAL_TOPIC, msgs.STRING), event.t_ns,
                     bytes(store.serialize_cdr(msg, msgs.STRING)))
        else:
            counts.skipped.append(f"{where}: not recorded")
            return
    except Exception as exc:  # one unreadable frame file must not lose the rest of the file
        counts.skipped.append(f"{where}: {type(exc).__name__}: {exc}")
        return
    if is_frame:
        counts.frames += 1
    else:
        counts.proposals += 1


__all__ = [
    "ANNOTATIONS_TOPIC",
    "DECISIONS_TOPIC",
    "FOXGLOVE_MSGS",
    "IMAGE_ANNOTATIONS",
    "MCAP_FILE",
    "VERDICT_RGBA",
    "McapCounts",
    "decision_line",
    "frame_annotations",
    "render",
    "to_message",
    "typestore",
    "write_mcap",
]
