"""Writing episodes that `guard replay` reads: rosbag2 (MCAP or sqlite3) and JSONL.

For examples, tests and converting your own logs, without ROS:

    write_bag("ep.mcap", [BagFrame(t=0.0, image=rgb), BagProposal(t=0.3, proposal={
        "id": "p0", "name": "stove_on", "description": "turn on the stove", "label": "unsafe"})],
        bare=True)

`BagRaw` writes arbitrary bytes under any type (to build damaged bags on purpose).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from guard.replay import msgs
from guard.replay.bag import DEFAULT_IMAGE_TOPIC, DEFAULT_PROPOSAL_TOPIC

T_NS = 1_000_000_000


@dataclass(frozen=True)
class BagFrame:
    """A camera frame. `encoding`: jpeg/png (CompressedImage) or rgb8/bgr8/mono8 (Image)."""

    t: float
    image: np.ndarray
    encoding: str = "jpeg"
    stamp: float | None = None  # header stamp; None: the same as t
    topic: str | None = None  # None: the bag's image topic


@dataclass(frozen=True)
class BagProposal:
    """A proposal as JSON fields (id, name, description, arguments, label)."""

    t: float
    proposal: dict[str, Any]
    topic: str | None = None


@dataclass(frozen=True)
class BagRaw:
    """Bytes written as they are, as a message of `msgtype` on `topic`."""

    t: float
    topic: str
    msgtype: str
    data: bytes


BagItem = BagFrame | BagProposal | BagRaw


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG" if fmt == "jpeg" else "PNG", quality=quality)
    return buf.getvalue()


def _stamp(store: Any, seconds: float) -> Any:
    ns = round(seconds * T_NS)
    return store.types["builtin_interfaces/msg/Time"](sec=ns // T_NS, nanosec=ns % T_NS)


def _header(store: Any, seconds: float, frame_id: str = "") -> Any:
    return store.types["std_msgs/msg/Header"](stamp=_stamp(store, seconds), frame_id=frame_id)


def _frame_msg(store: Any, item: BagFrame, quality: int) -> tuple[str, Any]:
    header = _header(store, item.t if item.stamp is None else item.stamp, "camera")
    if item.encoding in ("jpeg", "png"):
        data = np.frombuffer(encode_image(item.image, item.encoding, quality), np.uint8)
        cls = store.types[msgs.COMPRESSED_IMAGE]
        return msgs.COMPRESSED_IMAGE, cls(header=header, format=item.encoding, data=data)
    image = item.image
    if item.encoding == "bgr8":
        image = image[:, :, ::-1]
    elif item.encoding == "mono8":
        image = image[:, :, :1] if image.ndim == 3 else image[:, :, None]
    elif item.encoding != "rgb8":
        raise ValueError(f"unsupported encoding {item.encoding!r}")
    h, w = image.shape[:2]
    channels = 1 if item.encoding == "mono8" else 3
    cls = store.types[msgs.IMAGE]
    return msgs.IMAGE, cls(
        header=header, height=h, width=w, encoding=item.encoding, is_bigendian=0,
        step=w * channels, data=np.ascontiguousarray(image, dtype=np.uint8).reshape(-1),
    )


def _proposal_msg(store: Any, item: BagProposal, kind: str) -> tuple[str, Any]:
    p = item.proposal
    if kind == "string":
        return msgs.STRING, store.types[msgs.STRING](data=json.dumps(p, ensure_ascii=False))
    arguments = p.get("arguments", {})
    return msgs.ACTION_PROPOSAL, store.types[msgs.ACTION_PROPOSAL](
        header=_header(store, item.t),
        id=str(p.get("id", "")),
        name=str(p.get("name", "")),
        description=str(p.get("description", "")),
        arguments_json=arguments if isinstance(arguments, str) else json.dumps(arguments),
    )


def write_bag(
    path: str | Path,
    items: Iterable[BagItem],
    *,
    storage: Literal["mcap", "sqlite3"] = "mcap",
    bare: bool = False,
    image_topic: str = DEFAULT_IMAGE_TOPIC,
    proposal_topic: str = DEFAULT_PROPOSAL_TOPIC,
    proposal_type: Literal["string", "action_proposal"] = "string",
    extra_types: dict[str, str] | None = None,
    jpeg_quality: int = 90,
    offered_qos_profiles: str = "",
) -> Path:
    """Write a rosbag2 bag (a folder; with `bare=True` a single .mcap/.db3 file) of `items`.

    Args:
        path: Output folder (or file with `bare`); must not exist.
        items: Frames, proposals and raw messages; written in time order.
        storage: "mcap" or "sqlite3".
        bare: Write just the storage file at `path` (no metadata.yaml).
        image_topic: Topic for frames without their own.
        proposal_topic: Topic for proposals without their own.
        proposal_type: "string" (std_msgs/String JSON, keeps "label") or "action_proposal"
            (guard_interfaces/msg/ActionProposal; labels are dropped: the type has none).
        extra_types: More message types (name: .msg text) for `BagRaw` items.
        jpeg_quality: JPEG quality of jpeg frames.
        offered_qos_profiles: QoS of every topic, as rosbag2 writes it (its YAML text); empty
            for none.

    Returns:
        The path written.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.metadata import parse_qos
    from rosbags.typesys import get_types_from_msg

    store = msgs.typestore()
    if extra_types:
        from rosbags.typesys import Stores, get_typestore

        store = get_typestore(Stores.ROS2_JAZZY)
        store.register(get_types_from_msg(msgs.ACTION_PROPOSAL_MSG, msgs.ACTION_PROPOSAL))
        for name, text in extra_types.items():
            store.register(get_types_from_msg(text, name))
    out = Path(path)
    if out.exists():
        raise FileExistsError(f"{out} exists already")
    out.parent.mkdir(parents=True, exist_ok=True)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    target = Path(tempfile.mkdtemp(prefix="guard-bag-", dir=out.parent)) / "bag" if bare else out
    conns: dict[tuple[str, str], Any] = {}
    qos = parse_qos(offered_qos_profiles)
    with Writer(target, version=9, storage_plugin=plugin) as writer:

        def conn(topic: str, msgtype: str) -> Any:
            if (topic, msgtype) not in conns:
                conns[topic, msgtype] = writer.add_connection(
                    topic, msgtype, typestore=store, offered_qos_profiles=qos
                )
            return conns[topic, msgtype]

        for item in sorted(items, key=lambda i: i.t):
            t_ns = round(item.t * T_NS)
            if isinstance(item, BagRaw):
                writer.write(conn(item.topic, item.msgtype), t_ns, item.data)
                continue
            if isinstance(item, BagFrame):
                msgtype, msg = _frame_msg(store, item, jpeg_quality)
                topic = item.topic or image_topic
            else:
                msgtype, msg = _proposal_msg(store, item, proposal_type)
                topic = item.topic or proposal_topic
            writer.write(conn(topic, msgtype), t_ns, store.serialize_cdr(msg, msgtype))
    if bare:
        storage_file = next(target.glob("*.mcap" if storage == "mcap" else "*.db3"))
        shutil.move(str(storage_file), out)
        shutil.rmtree(target.parent)
    return out


def write_jsonl(path: str | Path, items: Iterable[BagFrame | BagProposal],
                frames_dir: str = "frames", image_format: str = "jpeg",
                jpeg_quality: int = 90) -> Path:
    """Write a JSONL episode (frames as image files beside it). Identical frames (same pixels)
    are written once and referenced by every line that shows them."""
    out = Path(path)
    root = out.parent
    (root / frames_dir).mkdir(parents=True, exist_ok=True)
    suffix = "jpg" if image_format == "jpeg" else "png"
    written: dict[bytes, str] = {}
    lines = []
    for item in sorted(items, key=lambda i: i.t):
        if isinstance(item, BagFrame):
            key = item.image.tobytes() + str(item.image.shape).encode()
            if key not in written:
                rel = f"{frames_dir}/{len(written):05d}.{suffix}"
                (root / rel).write_bytes(encode_image(item.image, image_format, jpeg_quality))
                written[key] = rel
            lines.append({"t": round(item.t, 9), "frame": written[key]})
        else:
            p = dict(item.proposal)
            label = p.pop("label", None)
            line: dict[str, Any] = {"t": round(item.t, 9), "proposal": p}
            if label is not None:
                line["label"] = label
            lines.append(line)
    out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines),
                   encoding="utf-8")
    return out


__all__ = ["BagFrame", "BagItem", "BagProposal", "BagRaw", "encode_image", "write_bag",
           "write_jsonl"]
