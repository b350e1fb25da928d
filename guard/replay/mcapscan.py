"""Reading what is left of a damaged MCAP file, record by record.

rosbags (like most MCAP readers) needs the file's summary and end magic, which a recording cut
short (the recorder killed, the disk full, a partial copy) does not have. This scanner walks
the data section from the start and yields every schema, channel and message it can parse,
including the readable part of a chunk that was cut in the middle (uncompressed, zstd or lz4
chunks), then raises `McapTruncated` saying where the file ends. Format: mcap.dev/spec.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from guard._deps import require

MAGIC = b"\x89MCAP0\r\n"
OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_DATA_END = 0x02, 3, 4, 5, 6, 0x0F


class McapTruncated(Exception):
    """The file ends (or breaks) before its end: everything yielded before it is good."""


@dataclass(frozen=True)
class Schema:
    id: int
    name: str
    encoding: str
    data: bytes


@dataclass(frozen=True)
class Channel:
    id: int
    schema_id: int
    topic: str
    message_encoding: str


@dataclass(frozen=True)
class Message:
    channel_id: int
    log_time: int
    data: bytes


Record = Schema | Channel | Message


class _Cursor:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise McapTruncated("record ends early")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> str:
        return self.take(self.u32()).decode("utf-8", errors="replace")

    def rest(self) -> bytes:
        out = self.buf[self.pos :]
        self.pos = len(self.buf)
        return out


def _parse(op: int, body: bytes) -> Record | None:
    c = _Cursor(body)
    if op == OP_SCHEMA:
        sid, name, encoding = c.u16(), c.string(), c.string()
        return Schema(sid, name, encoding, c.take(c.u32()))
    if op == OP_CHANNEL:
        cid, schema_id, topic, encoding = c.u16(), c.u16(), c.string(), c.string()
        return Channel(cid, schema_id, topic, encoding)
    if op == OP_MESSAGE:
        channel_id, _sequence, log_time, _publish = c.u16(), c.u32(), c.u64(), c.u64()
        return Message(channel_id, log_time, c.rest())
    return None


def _decompress(compression: str, data: bytes, size: int) -> bytes:
    """As much of a (possibly cut) chunk as decompresses, never more than the `size` bytes its
    header declares (a corrupt stream must not inflate without bound)."""
    if not compression:
        return data
    if compression == "zstd":
        import io

        zstandard = require("zstandard", "reading zstd-compressed MCAP chunks")
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        out = bytearray()
        try:
            while len(out) < size:
                block = reader.read(min(size - len(out), 1 << 20))
                if not block:
                    break
                out += block
        except zstandard.ZstdError:
            if not out:
                raise
        return bytes(out)
    if compression == "lz4":
        lz4_frame = require("lz4.frame", "reading lz4-compressed MCAP chunks")
        return bytes(lz4_frame.LZ4FrameDecompressor().decompress(data, max_length=size))
    raise McapTruncated(f"chunk compression {compression!r} is not supported")


def _inner(records: bytes, complete: bool) -> Iterator[Record]:
    pos = 0
    while pos < len(records):
        if pos + 9 > len(records):
            raise McapTruncated("a chunk ends inside a record header")
        op = records[pos]
        length = int.from_bytes(records[pos + 1 : pos + 9], "little")
        body = records[pos + 9 : pos + 9 + length]
        if len(body) < length:
            raise McapTruncated("a chunk ends inside a record")
        parsed = _parse(op, body)
        if parsed is not None:
            yield parsed
        pos += 9 + length
    if not complete:
        raise McapTruncated("the file ends inside a chunk")


def _chunk(body: bytes, complete: bool) -> Iterator[Record]:
    c = _Cursor(body)
    try:
        c.u64(), c.u64()
        uncompressed_size = c.u64()
        c.u32()
        compression = c.string()
        declared = c.u64()
    except McapTruncated:
        raise McapTruncated("the file ends inside a chunk header") from None
    data = c.rest()
    complete = complete and len(data) >= declared
    try:
        records = _decompress(compression, data[:declared], uncompressed_size)
    except McapTruncated:
        raise
    except Exception as exc:  # a corrupt compressed stream: nothing more to read here
        raise McapTruncated(f"chunk does not decompress ({type(exc).__name__}: {exc})") from None
    yield from _inner(records, complete)


def _read(f: BinaryIO, n: int, end: int) -> bytes:
    """Up to `n` bytes, never past `end` (the file size): a garbage record length must not
    become a read of exabytes."""
    return bytes(f.read(max(0, min(n, end - f.tell()))))


def scan_mcap(path: str | Path) -> Iterator[Record]:
    """Yield the schemas, channels and messages of an MCAP file, in file order.

    Returns normally at the data section's end (DataEnd or Footer record); raises
    McapTruncated where the file breaks off, after yielding everything before that point.

    Raises:
        McapTruncated: the file ends early or is corrupt from some point on.
    """
    with Path(path).open("rb") as f:
        end = os.fstat(f.fileno()).st_size
        magic = _read(f, len(MAGIC), end)
        if magic != MAGIC:
            raise McapTruncated("not an MCAP file (no MCAP magic at its start)")
        while True:
            head = _read(f, 9, end)
            if not head:
                raise McapTruncated("the file ends without its summary and footer")
            if len(head) < 9:
                raise McapTruncated("the file ends inside a record header")
            op, length = head[0], int.from_bytes(head[1:], "little")
            if op in (OP_FOOTER, OP_DATA_END):
                return
            if op == OP_CHUNK:
                body = _read(f, length, end)
                yield from _chunk(body, complete=len(body) == length)
                continue
            if op in (OP_SCHEMA, OP_CHANNEL, OP_MESSAGE):
                body = _read(f, length, end)
                if len(body) < length:
                    raise McapTruncated("the file ends inside a record")
                parsed = _parse(op, body)
                if parsed is not None:
                    yield parsed
                continue
            # indexes, attachments, metadata: not needed to replay
            skipped = min(length, end - f.tell())
            f.seek(skipped, os.SEEK_CUR)
            if skipped < length:
                raise McapTruncated("the file ends inside a record")


__all__ = ["Channel", "McapTruncated", "Message", "Schema", "scan_mcap"]
