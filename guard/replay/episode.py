"""Episodes: a time-ordered stream of camera frames and action proposals, from any source.

`open_episode(path)` picks the reader: a rosbag2 folder (sqlite3 or MCAP storage), a bare
`.mcap` or `.db3` file, or a JSONL episode (a `.jsonl` file, or a folder holding
`episode.jsonl`). Every reader yields `FrameEvent`s and `ProposalEvent`s and records what it
could not read as `Damage` instead of raising: a replay of a damaged recording still judges
everything that can be judged, and lists the rest.

JSONL episode format, one JSON object per line, times in seconds (any origin):

    {"t": 0.0, "frame": "frames/000.jpg"}
    {"t": 0.7, "proposal": {"id": "p0", "name": "stove_on", "description": "turn on the stove",
                            "arguments": {}}, "label": "unsafe"}

Frame paths are relative to the JSONL file's folder. "label" ("safe" | "unsafe", optional) may
also sit inside "proposal". A line may carry both "frame" and "proposal" (the frame counts as
seen at that time). Lines need not be in time order. "t" must be a finite number from 0 to
MAX_TIME_S (what a signed 64-bit count of nanoseconds holds, as ROS time); any other line is
damage (`bad_line`), listed with its reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guard.errors import InvalidInputError, UsageError
from guard.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_INPUT_PIXELS, decode_image_file
from guard.replay.msgs import ProposalError, printable, proposal_from_json
from guard.types import ActionProposal

JSONL_NAME = "episode.jsonl"
# Latest time an episode may carry, in seconds: int64 nanoseconds, as ROS and rosbag2 keep it.
MAX_TIME_S = (2**63 - 1) / 1e9

# Damage kinds, as counted in summary.json.
UNREADABLE_EPISODE = "unreadable_episode"  # the file or bag could not be opened at all
TRUNCATED = "truncated"  # the recording ends early (what came before it was replayed)
UNREADABLE_MESSAGE = "unreadable_message"  # a message that does not deserialize
UNKNOWN_TYPE = "unknown_type"  # a message type replay cannot read on a replayed topic
UNDECODABLE_FRAME = "undecodable_frame"  # a frame that is not a decodable image
BAD_PROPOSAL = "bad_proposal"  # a proposal without a name, with bad arguments or label
BAD_LINE = "bad_line"  # a JSONL line that is not an event
# Damage that means part of the episode was not replayed at all (as opposed to a record that
# was read and then vetoed or skipped as unusable): the replay is incomplete.
LOST_KINDS = (UNREADABLE_EPISODE, TRUNCATED, BAD_LINE)
DAMAGE_KINDS = (
    UNREADABLE_EPISODE,
    TRUNCATED,
    UNREADABLE_MESSAGE,
    UNKNOWN_TYPE,
    UNDECODABLE_FRAME,
    BAD_PROPOSAL,
    BAD_LINE,
)


@dataclass(frozen=True)
class Damage:
    """One thing in the episode that could not be read or judged as recorded."""

    kind: str
    detail: str
    topic: str | None = None
    t: float | None = None  # seconds, on the episode's clock

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "topic": self.topic, "t": self.t, "detail": self.detail}


@dataclass(frozen=True)
class Recorded:
    """A message exactly as a bag recorded it, kept so it can be copied into another bag
    (`guard replay --write-mcap`) without a second read.

    Attributes:
        msgtype: Its type name (e.g. sensor_msgs/msg/Image).
        data: Its CDR bytes.
        definition: The ros2msg definition the bag carries for the type ("" when none).
    """

    msgtype: str
    data: bytes
    definition: str = ""


@dataclass(eq=False)
class FrameEvent:
    """A camera frame as recorded; decoded only when a proposal needs it.

    Attributes:
        t_ns: When it was recorded (bag time), nanoseconds.
        topic: Where it came from (a topic, or "jsonl").
        stamp: Capture time in seconds (the header stamp when usable, else bag time).
        decode: Returns RGB uint8 pixels or raises InvalidInputError; None with `error`.
        error: Why this frame cannot be used (it was recorded, but is unreadable).
        recorded: The message as recorded (bags), for copying it.
        header_stamp_ns: The message's header stamp as recorded, integer nanoseconds (0 when
            unset; None for JSONL frames, which have no header). Viewers match overlays to an
            image by this exact value.
        file: The image file of a JSONL frame.
    """

    t_ns: int
    topic: str
    stamp: float
    decode: Callable[[], np.ndarray] | None
    error: str | None = None
    reported: bool = False
    _pixels: np.ndarray | None = field(default=None, repr=False)
    recorded: Recorded | None = field(default=None, repr=False)
    header_stamp_ns: int | None = None
    file: Path | None = None

    def pixels(self) -> np.ndarray:
        """The decoded frame (cached); raises InvalidInputError, remembering why."""
        if self._pixels is not None:
            return self._pixels
        if self.error is None:
            assert self.decode is not None
            try:
                self._pixels = self.decode()
                return self._pixels
            except InvalidInputError as exc:
                self.error = str(exc)
            except Exception as exc:  # any decoder failure means "cannot be judged"
                self.error = f"{self.topic}: frame does not decode ({type(exc).__name__}: {exc})"
            self.decode = None
        raise InvalidInputError(self.error)


@dataclass(eq=False)
class ProposalEvent:
    """An action proposal as recorded.

    Attributes:
        t_ns: When it was recorded, nanoseconds; it is judged against frames up to this time.
        topic: Where it came from.
        proposal: The proposal (a placeholder naming what is known when `error` is set).
        label: "safe" / "unsafe" when the episode carries one, else None.
        error: Why it cannot be judged as it is (then it becomes an invalid_input veto).
        recorded: The message as recorded (bags), for copying it.
    """

    t_ns: int
    topic: str
    proposal: ActionProposal
    label: str | None = None
    error: str | None = None
    recorded: Recorded | None = field(default=None, repr=False)


Event = FrameEvent | ProposalEvent


class Episode:
    """Base of the readers: what was read, what was damaged, where the topics are."""

    format = "unknown"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damage: list[Damage] = []
        self.notes: list[str] = []
        self.image_topic: str | None = None
        self.proposal_topic: str | None = None
        self.expected_proposals: int | None = None
        # Per replayed topic: messages the episode's index says it holds ("expected", None
        # when it has no index) and messages read from it ("read", damaged ones included).
        self.messages: dict[str, dict[str, int | None]] = {}
        self.opened = True

    def count_read(self, topic: str) -> None:
        counts = self.messages.setdefault(topic, {"expected": None, "read": 0})
        counts["read"] = (counts["read"] or 0) + 1

    def lost_messages(self) -> dict[str, int]:
        """Messages the index counts but the reader never returned, per topic (those > 0)."""
        lost = {}
        for topic, c in self.messages.items():
            expected, read = c["expected"], c["read"] or 0
            if expected is not None and expected > read:
                lost[topic] = expected - read
        return lost

    def add_damage(
        self, kind: str, detail: str, topic: str | None = None, t_ns: int | None = None
    ) -> None:
        # one line, writable anywhere: the detail may quote the episode's own bytes
        line = printable(" ".join(detail.split()), 300)
        self.damage.append(Damage(kind, line, topic, None if t_ns is None else t_ns / 1e9))

    def events(self) -> Iterator[Event]:
        """Frames and proposals, in recorded order (time order for every format here)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files."""


def time_ns(seconds: Any) -> int | None:
    """Integer nanoseconds of a time in seconds from JSON, or None when it is not a finite
    number from 0 to MAX_TIME_S (NaN, 1e308, -1, true, "1.0" all are None)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    if isinstance(seconds, float) and not math.isfinite(seconds):
        return None
    if not 0 <= seconds <= MAX_TIME_S:
        return None
    return min(round(seconds * 1_000_000_000), 2**63 - 1)


def placeholder(
    default_id: str, stamp: float, fields: Any = None
) -> ActionProposal:
    """The stand-in for a proposal that could not be judged, so its veto can be recorded: it
    keeps the id, name and description when they were readable (`fields`: a dict or a
    message), and no arguments."""

    def text(key: str) -> str:
        value = fields.get(key) if isinstance(fields, dict) else getattr(fields, key, None)
        return printable(value) if isinstance(value, str) else ""

    return ActionProposal(
        id=text("id") or default_id,
        name=text("name") or "unreadable",
        description=text("description"),
        stamp=stamp,
    )


class JsonlEpisode(Episode):
    """A JSONL episode (module docstring): frames by path, proposals inline, optional labels."""

    format = "jsonl"

    def __init__(
        self,
        path: Path,
        *,
        max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        super().__init__(path)
        self.root = path.parent
        self._limits = {"max_input_pixels": max_input_pixels, "max_file_bytes": max_file_bytes}
        self.image_topic, self.proposal_topic = "frame", "proposal"
        self._events: list[Event] = []
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self.add_damage(UNREADABLE_EPISODE, f"{path}: {exc.strerror or exc}")
            self.opened = False
            return
        lines = text.splitlines()
        if lines and not text.endswith("\n") and lines[-1].strip():
            # The writer was cut off mid-line: the last line is parsed if it still is JSON.
            try:
                json.loads(lines[-1])
            except ValueError:
                self.add_damage(TRUNCATED, f"last line ({len(lines)}) is cut off")
                lines = lines[:-1]
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                self._parse(n, line)
            except Exception as exc:  # no line of an episode may stop its replay
                self.add_damage(BAD_LINE, f"line {n}: cannot be read ({type(exc).__name__})")
        # stable: equal times keep the file's order
        self._events.sort(key=lambda e: e.t_ns)
        self.expected_proposals = sum(isinstance(e, ProposalEvent) for e in self._events)
        if not self.expected_proposals and not self.damage:
            # Nothing to judge and nothing damaged: the wrong file, not a replay to report.
            raise UsageError(f"{path}: no proposals (no line has a \"proposal\")")

    def _frame_decoder(self, rel: str) -> Callable[[], np.ndarray]:
        path = self.root / rel

        def decode() -> np.ndarray:
            return decode_image_file(path, **self._limits)

        return decode

    def _parse(self, n: int, line: str) -> None:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            self.add_damage(BAD_LINE, f"line {n}: not valid JSON ({exc})")
            return
        except RecursionError:
            self.add_damage(BAD_LINE, f"line {n}: nested too deeply to parse as JSON")
            return
        if not isinstance(obj, dict):
            self.add_damage(BAD_LINE, f"line {n}: not a JSON object")
            return
        if "episode" in obj and "frame" not in obj and "proposal" not in obj:
            return  # a header line with metadata
        t_ns = time_ns(obj.get("t"))
        if t_ns is None:
            self.add_damage(
                BAD_LINE, f"line {n}: 't' must be a number of seconds from 0 to {MAX_TIME_S:.4g}"
            )
            return
        t = t_ns / 1e9
        if "frame" not in obj and "proposal" not in obj:
            self.add_damage(BAD_LINE, f"line {n}: has neither 'frame' nor 'proposal'")
            return
        if "frame" in obj:
            rel = obj["frame"]
            if isinstance(rel, str) and rel:
                self._events.append(FrameEvent(t_ns, "jsonl", t, self._frame_decoder(rel),
                                               file=self.root / rel))
            else:
                error = f"line {n}: 'frame' must be a path string"
                self.add_damage(UNDECODABLE_FRAME, error, "jsonl", t_ns)
                self._events.append(FrameEvent(t_ns, "jsonl", t, None, error, True))
        if "proposal" in obj:
            default_id = f"line-{n}"
            data = obj["proposal"]
            if isinstance(data, dict) and "label" not in data and "label" in obj:
                data = {**data, "label": obj["label"]}
            try:
                proposal, label = proposal_from_json(data, default_id=default_id, stamp=t)
                self._events.append(ProposalEvent(t_ns, "jsonl", proposal, label))
            except ProposalError as exc:
                error = f"line {n}: {exc}"
                self.add_damage(BAD_PROPOSAL, error, "jsonl", t_ns)
                stand_in = placeholder(default_id, t, data)
                self._events.append(ProposalEvent(t_ns, "jsonl", stand_in, None, error))

    def events(self) -> Iterator[Event]:
        for event in self._events:
            self.count_read("frame" if isinstance(event, FrameEvent) else "proposal")
            yield event


def open_episode(
    path: str | Path,
    *,
    image_topic: str | None = None,
    proposal_topic: str | None = None,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Episode:
    """The reader for `path` (see the module docstring).

    Raises:
        UsageError: the path does not exist, is not an episode, holds no proposals (and no
            damage that could explain it), or a topic given explicitly is not in the bag or
            holds the wrong message type (the message lists the topics that are).
    """
    p = Path(path)
    limits = {"max_input_pixels": max_input_pixels, "max_file_bytes": max_file_bytes}
    if not p.exists():
        raise UsageError(f"episode not found: {p}")
    if p.is_dir():
        if (p / "metadata.yaml").is_file() or any(p.glob("*.mcap")) or any(p.glob("*.db3")):
            from guard.replay.bag import BagEpisode

            return BagEpisode(p, image_topic=image_topic, proposal_topic=proposal_topic, **limits)
        if (p / JSONL_NAME).is_file():
            return JsonlEpisode(p / JSONL_NAME, **limits)
        raise UsageError(
            f"{p}: not an episode (expected a rosbag2 folder with metadata.yaml, or a folder "
            f"with {JSONL_NAME})"
        )
    suffix = p.suffix.lower()
    if suffix in (".mcap", ".db3"):
        from guard.replay.bag import BagEpisode

        return BagEpisode(p, image_topic=image_topic, proposal_topic=proposal_topic, **limits)
    if suffix in (".jsonl", ".ndjson"):
        return JsonlEpisode(p, **limits)
    hint = ""
    if suffix == ".bag":  # rosbag2's own test resources still carry ROS 1 bags
        hint = "; a ROS 1 bag: convert it first (rosbags-convert --src BAG --dst DIR)"
    elif suffix == ".zstd":
        hint = ("; a zstd-compressed storage file: replay the rosbag2 folder that holds it and "
                "its metadata.yaml")
    raise UsageError(
        f"{p}: unknown episode format (use a rosbag2 folder, .mcap, .db3 or .jsonl){hint}")


__all__ = [
    "DAMAGE_KINDS",
    "LOST_KINDS",
    "MAX_TIME_S",
    "Damage",
    "Episode",
    "Event",
    "FrameEvent",
    "JsonlEpisode",
    "ProposalEvent",
    "Recorded",
    "open_episode",
    "time_ns",
]
