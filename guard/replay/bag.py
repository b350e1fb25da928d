"""rosbag2 (sqlite3 or MCAP storage) and bare .mcap/.db3 episodes, read with rosbags.

No ROS install is needed: message types come from rosbags' Jazzy typestore plus
`guard_interfaces/msg/ActionProposal` registered from its .msg text. Images are
`sensor_msgs/msg/Image` or `CompressedImage`; proposals `guard_interfaces/msg/ActionProposal` or
`std_msgs/msg/String` holding the proposal as JSON (which may carry a "label").

An MCAP file that rosbags cannot open (a recording cut short has no summary) is read record by
record instead (`mcapscan`), so everything before the cut is replayed and the cut is reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from guard.errors import UsageError
from guard.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_INPUT_PIXELS
from guard.replay import msgs
from guard.replay.episode import (
    BAD_PROPOSAL,
    TRUNCATED,
    UNKNOWN_TYPE,
    UNREADABLE_EPISODE,
    UNREADABLE_MESSAGE,
    Episode,
    Event,
    FrameEvent,
    ProposalEvent,
    Recorded,
    placeholder,
)
from guard.wire import (
    InvalidStamp,
    header_stamp_ns,
    ns_to_seconds,
    ros_compressed_to_rgb,
    ros_image_to_rgb,
)

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_PROPOSAL_TOPIC = "/guard/proposals"
# A header stamp further than this from the bag time is on another clock (simulated time, an
# unsynchronised camera); frame ages then use bag time.
MAX_STAMP_SKEW_S = 60.0


def _norm(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def resolve_topic(
    requested: str | None,
    default: str,
    available: dict[str, set[str]],
    accepted: tuple[str, ...],
    flag: str,
    strict: bool = True,
) -> tuple[str | None, str | None]:
    """(topic to replay, as the bag spells it; note). Names match with or without their
    leading slash (`guard/proposals` is `/guard/proposals`, whichever way the bag wrote it).

    A topic asked for that the bag lacks, or one that holds no type in `accepted`, is a usage
    error; with the default missing, the only topic of an accepted type is taken (and noted).
    Not `strict` (a damaged bag whose channel list may be incomplete): a name not seen is
    taken as given.
    """

    def listing() -> str:
        return ", ".join(f"{t} [{'/'.join(sorted(ty))}]" for t, ty in sorted(available.items()))

    def spelled(name: str) -> str | None:
        if name in available:
            return name
        return next((t for t in sorted(available) if _norm(t) == _norm(name)), None)

    def checked(topic: str, asked: str) -> str:
        types = available.get(topic, set())
        if types and not types & set(accepted):
            raise UsageError(
                f"{flag} {asked}: {topic} holds {'/'.join(sorted(types))}, not "
                f"{' or '.join(accepted)}; topics: {listing()}"
            )
        return topic

    if requested is not None:
        topic = spelled(requested)
        if topic is None and not strict:
            return _norm(requested), (
                f"{_norm(requested)} was not seen in the readable part of the episode"
            )
        if topic is None:
            raise UsageError(f"{flag} {requested}: not in the episode; topics: {listing() or '-'}")
        return checked(topic, requested), None
    topic = spelled(default)
    if topic is not None:
        return checked(topic, f"(default {default})"), None
    candidates = sorted(t for t, types in available.items() if types & set(accepted))
    if len(candidates) == 1:
        return candidates[0], f"{default} is not in the episode; using {candidates[0]}"
    if not strict:
        return default, None
    if len(candidates) > 1:
        raise UsageError(
            f"{default} is not in the episode and several topics could be meant: "
            f"{', '.join(candidates)}; pick one with {flag}"
        )
    return None, None


class BagEpisode(Episode):
    """A rosbag2 folder, or a bare .mcap / .db3 file."""

    def __init__(
        self,
        path: Path,
        *,
        image_topic: str | None = None,
        proposal_topic: str | None = None,
        max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        super().__init__(path)
        store = msgs.typestore()  # raises MissingExtraError naming the replay extra
        self._store = store
        self._max_input_pixels = max_input_pixels
        self._max_file_bytes = max_file_bytes
        # rosbags readers: one for a bare file or a rosbag2 folder, one per storage file for a
        # folder without a metadata.yaml rosbags can read
        self._readers: list[Any] = []
        # messages per topic from a metadata.yaml rosbags could not use, when it has them
        self._index_counts: dict[str, int] | None = None
        self._scan_files: list[Path] = []
        self._stores: dict[str, Any] = {}
        self._skew_noted = False
        self._bad_stamp_noted = False
        self._n_proposals = 0
        mcaps = (
            [path] if path.suffix.lower() == ".mcap"
            else sorted(path.glob("*.mcap")) if path.is_dir() else []
        )
        self.format = "mcap" if mcaps else "sqlite3"
        if path.is_dir():
            self.format = f"rosbag2-{self.format}"
        available: dict[str, set[str]] = {}
        counts: dict[str, int] = {}  # messages per topic: the index's count, or those scanned
        scan_complete = False
        try:
            self._readers = self._open_readers(path, mcaps)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, _IncompleteSummary) else (
                f"{type(exc).__name__}: {exc}")
            if not mcaps:
                self.add_damage(UNREADABLE_EPISODE, f"{path}: {reason}")
                self.opened = False
                return
            self._scan_files = mcaps
            self.notes.append(f"rosbags could not open the bag ({reason}); read record by record")
            available, counts, scan_complete = self._scan_topics()
        else:
            for reader in self._readers:
                for conn in reader.connections:
                    available.setdefault(conn.topic, set()).add(conn.msgtype)
                    counts[conn.topic] = counts.get(conn.topic, 0) + conn.msgcount
            if self._index_counts is not None:
                # the bag's own index outranks what the files at hand hold: a split file
                # gone missing shows up as messages never read
                counts = dict(self._index_counts)
        try:
            # a channel list read whole (an index, or a scan to the file's end) is complete
            self._pick_topics(image_topic, proposal_topic, available,
                              strict=bool(self._readers) or scan_complete)
        except UsageError:
            self.close()
            raise
        assert self.proposal_topic is not None
        n_proposals = counts.get(self.proposal_topic, 0)
        if self._readers or scan_complete:
            # Nothing to judge is a mistake in what was asked for, not damage to report.
            if n_proposals == 0:
                self.close()
                listing = ", ".join(f"{t} ({n})" for t, n in sorted(counts.items()))
                raise UsageError(
                    f"{path}: no proposals: {self.proposal_topic} holds no messages "
                    f"(messages per topic: {listing or '-'}); pass --proposal-topic"
                )
        for topic in (self.image_topic, self.proposal_topic):
            if topic is not None:
                # Expected counts come from the bag's index (metadata.yaml, the MCAP summary,
                # the sqlite3 table); a bag read record by record has none.
                expected = counts.get(topic, 0) if self._readers else None
                self.messages[topic] = {"expected": expected, "read": 0}
        if self._readers:
            self.expected_proposals = n_proposals

    def _open_readers(self, path: Path, mcaps: list[Path]) -> list[Any]:
        """Open rosbags readers for the episode; raises what rosbags raises, or
        `_IncompleteSummary` for an MCAP file whose summary rosbags would misread.

        A rosbag2 folder without metadata.yaml (the recorder did not end cleanly; rosbag2's
        own reindex test bags), with one in the layout of versions 1-2 (topics under
        `topic_and_type`), or one that lists a split file the folder lacks (a partial copy),
        all of which rosbags refuses, is read storage file by storage file: each .db3 and
        .mcap describes its own topics. The metadata's message counts, where it has them,
        stay the index the read is measured against.
        """
        from rosbags.rosbag2 import Reader

        files = [path]
        if path.is_dir():
            why, self._index_counts = _unusable_metadata(path)
            if why is not None:
                files = _storage_files(path)
                if not files:
                    raise UsageError(f"{path}: {why}, and no .db3 or .mcap storage file to read")
                self.notes.append(f"{why}: read its {len(files)} storage files one by one")
        readers: list[Any] = []
        try:
            for file in files:
                reader = Reader(file)
                reader.open()
                readers.append(reader)
            for mcap in mcaps:
                _check_summary(mcap)
        except BaseException:
            for reader in readers:
                _close(reader)
            raise
        return readers

    def _pick_topics(
        self, image_topic: str | None, proposal_topic: str | None,
        available: dict[str, set[str]], strict: bool,
    ) -> None:
        self.image_topic, note = resolve_topic(
            image_topic, DEFAULT_IMAGE_TOPIC, available, msgs.IMAGE_TYPES, "--image-topic", strict
        )
        if note:
            self.notes.append(note)
        if self.image_topic is None:
            self.notes.append(
                f"no image topic ({DEFAULT_IMAGE_TOPIC} or any Image/CompressedImage topic): "
                "every proposal is judged without a frame"
            )
        self.proposal_topic, note = resolve_topic(
            proposal_topic, DEFAULT_PROPOSAL_TOPIC, available, msgs.PROPOSAL_TYPES,
            "--proposal-topic", strict,
        )
        if note:
            self.notes.append(note)
        if self.proposal_topic is None:
            raise UsageError(
                f"{self.path}: no proposal topic ({DEFAULT_PROPOSAL_TOPIC} or any ActionProposal/"
                "String topic); pass --proposal-topic"
            )

    # -- reading ---------------------------------------------------------------------------

    def _scan_topics(self) -> tuple[dict[str, set[str]], dict[str, int], bool]:
        """Topics with their types, messages per topic, and whether every file was read to
        its end, from a pass over the files record by record."""
        from guard.replay.mcapscan import Channel, McapTruncated, Message, Schema, scan_mcap

        topics: dict[str, set[str]] = {}
        counts: dict[str, int] = {}
        complete = True
        for file in self._scan_files:
            schemas: dict[int, str] = {}
            channels: dict[int, str] = {}
            try:
                for rec in scan_mcap(file):
                    if isinstance(rec, Schema):
                        schemas[rec.id] = rec.name
                    elif isinstance(rec, Channel):
                        topics.setdefault(rec.topic, set()).add(schemas.get(rec.schema_id, "?"))
                        channels[rec.id] = rec.topic
                    elif isinstance(rec, Message) and rec.channel_id in channels:
                        topic = channels[rec.channel_id]
                        counts[topic] = counts.get(topic, 0) + 1
            except McapTruncated:
                complete = False  # reported once, when the messages are read
        return topics, counts, complete

    def _store_for(self, msgtype: str, definition: str) -> Any:
        """The typestore to read `msgtype` with: ours, or for an ActionProposal the bag defines
        differently (another version of the message), one built from the bag's definition; the
        fields replay needs are read by name either way."""
        if msgtype != msgs.ACTION_PROPOSAL or not definition:
            return self._store
        if _strip_msg(definition) == _strip_msg(msgs.ACTION_PROPOSAL_MSG):
            return self._store
        if definition not in self._stores:
            try:
                self._stores[definition] = msgs.typestore_from_definition(msgtype, definition)
            except Exception:  # an unparseable definition: try ours, damage shows per message
                self._stores[definition] = self._store
        return self._stores[definition]

    def _frame(self, topic: str, msgtype: str, t_ns: int, raw: bytes, store: Any) -> FrameEvent:
        t = t_ns / 1e9
        if msgtype not in msgs.IMAGE_TYPES:
            error = f"{topic}: message type {msgtype} is not an image type replay can read"
            self.add_damage(UNKNOWN_TYPE, error, topic, t_ns)
            return FrameEvent(t_ns, topic, t, None, error, reported=True)
        try:
            msg = store.deserialize_cdr(raw, msgtype)
        except Exception as exc:
            error = f"{topic}: {msgtype} does not deserialize ({type(exc).__name__}: {exc})"
            self.add_damage(UNREADABLE_MESSAGE, error, topic, t_ns)
            return FrameEvent(t_ns, topic, t, None, error, reported=True)
        try:
            header_ns = header_stamp_ns(getattr(msg, "header", None))
        except InvalidStamp as exc:  # ages use bag time, as for a stamp far from it
            header_ns = None
            if not self._bad_stamp_noted:
                self._bad_stamp_noted = True
                self.notes.append(f"{topic}: {exc}; frame ages use bag time")
        stamp = ns_to_seconds(header_ns)
        if stamp is None or abs(stamp - t) > MAX_STAMP_SKEW_S:
            if stamp is not None and not self._skew_noted:
                self._skew_noted = True
                self.notes.append(
                    f"{topic}: header stamps differ from bag time by over {MAX_STAMP_SKEW_S:g} s;"
                    " frame ages use bag time"
                )
            stamp = t
        convert = ros_compressed_to_rgb if msgtype == msgs.COMPRESSED_IMAGE else ros_image_to_rgb
        source = f"{topic}@{t:.3f}"
        decode: Callable[[], np.ndarray] = partial(
            convert, msg, source=source, max_input_pixels=self._max_input_pixels
        )
        return FrameEvent(t_ns, topic, stamp, decode, header_stamp_ns=header_ns or 0)

    def _proposal(
        self, topic: str, msgtype: str, t_ns: int, raw: bytes, store: Any
    ) -> ProposalEvent:
        t = t_ns / 1e9
        self._n_proposals += 1
        default_id = f"proposal-{self._n_proposals:05d}"
        if msgtype not in msgs.PROPOSAL_TYPES:
            error = f"{topic}: message type {msgtype} is not a proposal type replay can read"
            self.add_damage(UNKNOWN_TYPE, error, topic, t_ns)
            return ProposalEvent(t_ns, topic, placeholder(default_id, t), None, error)
        try:
            msg = store.deserialize_cdr(raw, msgtype)
        except Exception as exc:
            error = f"{topic}: {msgtype} does not deserialize ({type(exc).__name__}: {exc})"
            self.add_damage(UNREADABLE_MESSAGE, error, topic, t_ns)
            return ProposalEvent(t_ns, topic, placeholder(default_id, t), None, error)
        try:
            if msgtype == msgs.STRING:
                proposal, label = msgs.proposal_from_json(
                    msg.data, default_id=default_id, stamp=t
                )
            else:
                proposal = msgs.proposal_from_msg(msg, default_id=default_id, stamp=t)
                label = None
        except msgs.ProposalError as exc:
            error = f"{topic}: {exc}"
            self.add_damage(BAD_PROPOSAL, error, topic, t_ns)
            fields: Any = msg
            if msgtype == msgs.STRING:
                try:
                    fields = json.loads(msg.data)
                except (ValueError, RecursionError):
                    fields = None
            return ProposalEvent(t_ns, topic, placeholder(default_id, t, fields), None, error)
        return ProposalEvent(t_ns, topic, proposal, label)

    def _event(
        self, topic: str, msgtype: str, t_ns: int, raw: bytes, store: Any, definition: str = ""
    ) -> Event | None:
        event = self._read_event(topic, msgtype, t_ns, raw, store)
        if event is not None:
            event.recorded = Recorded(msgtype, bytes(raw), definition)
        return event

    def _read_event(
        self, topic: str, msgtype: str, t_ns: int, raw: bytes, store: Any
    ) -> Event | None:
        try:
            if topic == self.image_topic:
                return self._frame(topic, msgtype, t_ns, raw, store)
            if topic == self.proposal_topic:
                return self._proposal(topic, msgtype, t_ns, raw, store)
        except Exception as exc:  # one message that breaks a reader must not end the replay
            error = f"{topic}: {msgtype} cannot be read ({type(exc).__name__}: {exc})"
            self.add_damage(UNREADABLE_MESSAGE, error, topic, t_ns)
            if topic == self.proposal_topic:
                stand_in = placeholder(f"proposal-{self._n_proposals:05d}", t_ns / 1e9)
                return ProposalEvent(t_ns, topic, stand_in, None, error)
            return FrameEvent(t_ns, topic, t_ns / 1e9, None, error, reported=True)
        return None

    def events(self) -> Iterator[Event]:
        if self._readers:
            for reader in list(self._readers):
                yield from self._reader_events(reader)
        else:
            for file in self._scan_files:
                yield from self._scan_events(file)

    def _wanted_connections(self, reader: Any) -> list[Any]:
        """The reader's connections on the replayed topics, plus, for a rosbag2 folder, a copy
        of each carrying the QoS and type hash its storage file records.

        rosbags pairs the connections of metadata.yaml with those of the storage file on topic,
        type, QoS and hash, and skips every message of a connection it cannot pair. rosbag2
        writes QoS text differently in the two places (rosbag2's own test bags: an infinite
        deadline is `sec: 0, nsec: 0` in metadata.yaml and `sec: 2147483647, nsec: 4294967295`
        in the storage), so whole topics read as empty. Topic and type are what identify a
        stream here; the copies make rosbags pair on those alone.
        """
        wanted = {self.image_topic, self.proposal_topic}
        conns = [c for c in reader.connections if c.topic in wanted]
        stored = [
            sc for storage in getattr(reader.storage, "storages", ())
            for sc in storage.connections
        ]
        extra = [
            c._replace(ext=sc.ext, digest=sc.digest)
            for c in conns
            for sc in stored
            if (sc.topic, sc.msgtype) == (c.topic, c.msgtype)
            and (sc.ext, sc.digest) != (c.ext, c.digest)
        ]
        return conns + extra

    def _reader_events(self, reader: Any) -> Iterator[Event]:
        conns = self._wanted_connections(reader)
        if not conns:
            return
        # Only metadata.yaml says a bag's messages are compressed; without it (a bare .db3, a
        # folder read file by file) they arrive as rosbag2 stored them.
        undeclared = reader.compression_mode is None
        last_t: int | None = None
        try:
            for conn, t_ns, stored in reader.messages(connections=conns):
                last_t = t_ns
                self.count_read(conn.topic)
                raw = self._decompressed(stored) if undeclared else stored
                store = self._store_for(conn.msgtype, conn.msgdef.data)
                event = self._event(conn.topic, conn.msgtype, t_ns, raw, store,
                                    conn.msgdef.data or "")
                if event is not None:
                    yield event
        except Exception as exc:  # a corrupt page or chunk: keep what was read
            where = "before the first message" if last_t is None else f"after t={last_t / 1e9:.3f}"
            self.add_damage(
                TRUNCATED, f"reading stopped {where}: {type(exc).__name__}: {exc}", None, last_t
            )

    def _scan_events(self, file: Path) -> Iterator[Event]:
        from guard.replay.mcapscan import Channel, McapTruncated, Message, Schema, scan_mcap

        schemas: dict[int, Schema] = {}
        channels: dict[int, tuple[str, str, str]] = {}
        last_t: int | None = None
        try:
            for rec in scan_mcap(file):
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                elif isinstance(rec, Channel):
                    schema = schemas.get(rec.schema_id)
                    msgtype = schema.name if schema else "?"
                    definition = (
                        schema.data.decode("utf-8", "replace")
                        if schema and schema.encoding == "ros2msg" else ""
                    )
                    channels[rec.id] = (rec.topic, msgtype, definition)
                elif isinstance(rec, Message) and rec.channel_id in channels:
                    topic, msgtype, definition = channels[rec.channel_id]
                    if topic not in (self.image_topic, self.proposal_topic):
                        continue
                    last_t = rec.log_time
                    self.count_read(topic)
                    store = self._store_for(msgtype, definition)
                    event = self._event(topic, msgtype, rec.log_time, rec.data, store,
                                        definition)
                    if event is not None:
                        yield event
        except McapTruncated as exc:
            where = "before the first message" if last_t is None else f"after t={last_t / 1e9:.3f}"
            self.add_damage(TRUNCATED, f"{file.name}: {exc} ({where})", None, last_t)

    def _decompressed(self, stored: bytes) -> bytes:
        """A message rosbag2 compressed one by one (a zstd frame; CDR data never starts with
        the zstd magic), decompressed; anything else as it is. A frame that declares more
        than `max_file_bytes` or does not decompress stays as stored and fails to
        deserialize, as damage."""
        if bytes(stored[:4]) != ZSTD_MAGIC:
            return stored
        from guard._deps import require

        zstandard = require("zstandard", "reading rosbag2 bags with compressed messages")
        try:
            size = zstandard.frame_content_size(stored)
            if size < 0 or size > self._max_file_bytes:
                return stored
            return bytes(zstandard.ZstdDecompressor().decompress(stored))
        except zstandard.ZstdError:
            return stored

    def close(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            _close(reader)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _IncompleteSummary(Exception):
    """An MCAP summary that does not repeat every channel and schema of the file."""


def _check_summary(file: Path) -> None:
    """Raise `_IncompleteSummary` when rosbags would misread `file`'s topics.

    The MCAP spec lets a writer leave channels or schemas out of the summary (the
    conformance files without `rch`/`rsh`); rosbags takes its topics from the summary alone
    and then sees no topics, or topics without a type. Such files are read record by record.
    """
    from guard._deps import require

    require("mcap", "guard replay of MCAP episodes")
    from mcap.reader import make_reader

    try:
        with file.open("rb") as fh:
            summary = make_reader(fh).get_summary()
    except Exception:  # rosbags opened it; what is left to check cannot be checked
        return
    if summary is None:
        return
    stats = summary.statistics
    missing_channels = not summary.channels or (
        stats is not None and stats.channel_count > len(summary.channels))
    missing_schemas = any(
        c.schema_id and c.schema_id not in summary.schemas for c in summary.channels.values())
    if missing_channels or missing_schemas:
        left_out = "channels" if missing_channels else "schemas"
        raise _IncompleteSummary(f"{file.name}: its summary leaves {left_out} out")


def _unusable_metadata(folder: Path) -> tuple[str | None, dict[str, int] | None]:
    """Why rosbags cannot read `folder` by its metadata.yaml (None when it can, or when
    rosbags will say best what is wrong), and the messages per topic the file counts."""
    meta = folder / "metadata.yaml"
    if not meta.is_file():
        return "no metadata.yaml", None
    from pathlib import PurePath

    import yaml

    try:
        info = yaml.safe_load(meta.read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        counts: dict[str, int] = {}
        old = False
        for entry in info["topics_with_message_count"]:
            topic = entry.get("topic_metadata") or entry.get("topic_and_type")
            old = old or "topic_metadata" not in entry
            counts[topic["name"]] = counts.get(topic["name"], 0) + int(entry["message_count"])
        missing = [name for name in (PurePath(str(x)).name for x in info["relative_file_paths"])
                   if not (folder / name).is_file()]
    except Exception:
        return None, None
    if old:
        return f"metadata.yaml version {info.get('version')} lists topics as topic_and_type", (
            counts)
    if missing:
        return f"metadata.yaml lists {', '.join(missing)}, not in the folder", counts
    return None, None


def _storage_files(folder: Path) -> list[Path]:
    """The folder's .db3 files (else its .mcap files) in split order (name_0, name_1, ...,
    name_10: by the number at the end, not as text)."""
    def split_index(p: Path) -> tuple[str, int]:
        stem, _, index = p.stem.rpartition("_")
        return (stem, int(index)) if index.isdigit() else (p.stem, -1)

    files = sorted(folder.glob("*.db3"), key=split_index)
    return files or sorted(folder.glob("*.mcap"), key=split_index)


def _close(reader: Any) -> None:
    try:
        reader.close()
    except Exception:
        pass


def _strip_msg(text: str) -> str:
    """A ros2msg definition's first message without comments or blank lines."""
    first = text.split("=" * 80)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in first.splitlines()]
    return "\n".join(ln for ln in lines if ln)


__all__ = ["DEFAULT_IMAGE_TOPIC", "DEFAULT_PROPOSAL_TOPIC", "BagEpisode", "resolve_topic"]
