"""The audit log: append-only JSONL, one record per decision, hash-chained and anchored.

Each record carries `seq`, `prev` (the previous record's hash) and `hash` (SHA-256 of the
record's canonical JSON without `hash`). Editing, deleting or reordering a record breaks the
chain at that record, which `verify` reports. Next to the log `LOG` live:

    LOG.head         the anchor: last seq and hash, oldest kept seq, the log file's identity;
                     replaced atomically (tmp + rename) after every record. A cut tail shows
                     as a log that ends before its head.
    LOG.lock         taken with flock around every append, so threads and processes that share
                     the log write one chain.
    LOG.1, LOG.2...  rotated files (with `max_bytes`), oldest first; the first record of each
                     file links to the last record of the one before.
    LOG.torn-NS      bytes of a record a crashed writer left half-written, cut from the log when
                     it was next opened; a `repair` record in the chain names them.

A record is written whole or not at all: a short write is continued, a failed one is cut back
and raised as `AuditError` (the guard turns that into a veto). Before each append the writer
checks that the file at the path is still the one it writes to and ends where it left it; when
another writer appended, it continues their chain; when the file was deleted, replaced or
truncated under it, it writes a `reopen` record saying so (and what was lost) into the file now
at the path, so no decision is written into a file nobody will read.

Payloads are made JSON-safe before hashing: text UTF-8 cannot encode is escaped, strings over
`MAX_FIELD_CHARS` become a digest and a prefix, unknown objects their repr, NaN and infinities
strings, nesting beyond `MAX_DEPTH` is cut. So any payload can be audited, and `verify`
recomputes the same hash from the stored JSON.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from guard.errors import AuditError, UsageError

if TYPE_CHECKING:
    from guard.config import AuditConfig

log = logging.getLogger(__name__)

GENESIS = "0" * 64

MAX_FIELD_CHARS = 16 * 1024  # a longer string is stored as {"sha256", "prefix", "chars"}
PREFIX_CHARS = 1024
MAX_DEPTH = 64  # containers nested deeper are replaced by a note
MAX_ARRAY_ITEMS = 4096  # a larger numpy array is stored as shape, dtype and digest
MAX_RECORD_CHARS = 1 << 20  # about this much JSON per record; the rest is elided
MAX_LINE_BYTES = 128 << 20  # the longest line reopen and verify hold in memory
_BLOCK = 1 << 16
_MAX_PROBLEMS = 50


# -- making a payload storable ------------------------------------------------------------------


def _escape(s: str) -> str:
    """`s` with what UTF-8 cannot encode (lone surrogates) written as backslash escapes."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s


def _digest(s: str) -> dict[str, Any]:
    return {
        "sha256": hashlib.sha256(s.encode("utf-8")).hexdigest(),
        "prefix": s[:PREFIX_CHARS],
        "chars": len(s),
    }


def _key(k: object) -> str:
    """A dict key as JSON would write it, escaped and bounded."""
    if isinstance(k, str):
        s = _escape(k)
    elif k is None or isinstance(k, (bool, int, float)):
        s = json.dumps(k) if not isinstance(k, int) or k.bit_length() < 1000 else hex(k)
    else:
        s = _safe_repr(k)
    if len(s) > MAX_FIELD_CHARS:
        return f"<key sha256={hashlib.sha256(s.encode()).hexdigest()} chars={len(s)}>"
    return s


def _safe_repr(v: object) -> str:
    try:
        return _escape(repr(v))
    except Exception:
        return f"<unrepresentable {type(v).__name__}>"


class _Storable:
    """Turns one payload into plain JSON data, within a per-record size budget."""

    def __init__(self) -> None:
        self.budget = MAX_RECORD_CHARS
        self.open: set[int] = set()  # containers on the current path: a revisit is a cycle

    def value(self, v: object, depth: int) -> Any:
        t = type(v)
        if t is str:  # the common case first
            return self.text(v)  # type: ignore[arg-type]
        if t is dict:
            return self.container(v, depth)
        if v is None or t is bool:
            return v
        if isinstance(v, str):
            return self.text(str.__str__(v))
        if isinstance(v, int):
            if v.bit_length() > 1000:  # past int->str's digit limit; hex has none
                return {"int_hex": self.text(hex(v))}
            self.budget -= 8
            return int(v)
        if isinstance(v, float):
            self.budget -= 8
            if math.isfinite(v):
                return float(v)
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        if isinstance(v, (bytes, bytearray, memoryview)):
            b = bytes(v)
            self.budget -= 160
            return {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest(),
                    "hex": b[:64].hex()}
        if type(v).__module__ == "numpy":
            return self.numpy(v, depth)
        if isinstance(v, (Mapping, list, tuple, set, frozenset)):
            return self.container(v, depth)
        if isinstance(v, os.PathLike):
            return self.text(_escape(str(os.fspath(v))))
        dump = getattr(v, "model_dump", None)  # pydantic models: their own JSON form
        if callable(dump):
            try:
                return self.value(dump(mode="json"), depth)
            except Exception:
                pass
        return self.text(_safe_repr(v))

    def container(self, v: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            return f"<elided: nested deeper than {MAX_DEPTH} levels>"
        if self.budget <= 0:
            return "<elided: record size limit>"
        if id(v) in self.open:
            return "<cycle>"
        self.budget -= 2
        self.open.add(id(v))
        try:
            if isinstance(v, Mapping):
                return self.mapping(v, depth)
            return self.sequence(v, depth)
        finally:
            self.open.discard(id(v))

    def text(self, s: str) -> Any:
        s = _escape(s)
        if len(s) > MAX_FIELD_CHARS or (self.budget <= 0 and len(s) > 64):
            self.budget -= PREFIX_CHARS + 128
            return _digest(s)
        self.budget -= len(s) + 2
        return s

    def mapping(self, v: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n, (k, item) in enumerate(v.items()):
            if self.budget <= 0:
                out["<elided>"] = f"{len(v) - n} more items: record size limit"
                break
            key = _key(k)
            self.budget -= len(key) + 4
            out[key] = self.value(item, depth + 1)
        return out

    def sequence(self, v: Any, depth: int) -> list[Any]:
        out: list[Any] = []
        for n, item in enumerate(v):
            if self.budget <= 0:
                out.append(f"<elided: {len(v) - n} more items: record size limit>")
                break
            self.budget -= 1
            out.append(self.value(item, depth + 1))
        return out

    def numpy(self, v: Any, depth: int) -> Any:
        try:
            if getattr(v, "ndim", 0) == 0:
                return self.value(v.item(), depth)
            if v.size <= MAX_ARRAY_ITEMS:
                return self.value(v.tolist(), depth)
            self.budget -= 200
            return {"shape": list(v.shape), "dtype": str(v.dtype),
                    "sha256": hashlib.sha256(v.tobytes()).hexdigest()}
        except Exception:
            return self.text(_safe_repr(v))


def json_safe(value: object) -> Any:
    """`value` as the audit log stores it: plain JSON data that any JSON reader accepts.

    Text is escaped where UTF-8 cannot hold it, strings over `MAX_FIELD_CHARS` become
    `{"sha256", "prefix", "chars"}`, bytes a digest, numpy values lists or a digest, NaN and
    infinities strings, unknown objects their repr, cycles and nesting past `MAX_DEPTH` a note.
    """
    return _Storable().value(value, 0)


# One encoder, built once: json.dumps with non-default options builds a new one per call.
# allow_nan stays on for reading: a record written by an older version may hold NaN, and its
# hash was computed that way. New records never do (json_safe).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(record: Mapping[str, Any]) -> bytes:
    return _CANONICAL.encode(record).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


# -- files next to the log ----------------------------------------------------------------------


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def rotated_files(path: str | Path) -> list[Path]:
    """The rotated files of the log at `path` (`path.1`, `path.2`, ...), oldest first."""
    p = Path(path).expanduser()
    pattern = re.compile(re.escape(p.name) + r"\.([0-9]+)")
    found: list[tuple[int, Path]] = []
    try:
        entries = list(p.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), entry))
    return [f for _, f in sorted(found)]


def _next_rotated_name(path: Path) -> Path:
    """`path.N` for an N past every name of that form, whatever it is (a directory or a FIFO
    named like a rotated file would make the rename fail or replace it)."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]+)")
    numbers = [int(m.group(1)) for name in os.listdir(path.parent)
               if (m := pattern.fullmatch(name))]
    number = max(numbers, default=0) + 1
    while os.path.lexists(target := _sibling(path, f".{number}")):
        number += 1
    return target


@dataclass(frozen=True)
class Head:
    """The anchor kept outside the log (`LOG.head`)."""

    seq: int  # of the last record written
    hash: str
    first_seq: int  # seq of the oldest record still kept (rotation with `keep` prunes)
    dev: int
    ino: int
    size: int


# The head file holds two slots of _HEAD_SLOT bytes (a JSON line padded with spaces, with a
# generation and a checksum), written alternately in place. A write torn by a crash spoils
# only the slot being written; the reader takes the valid slot of the higher generation.
# In place rather than tmp + rename: a rename per decision costs ~0.2 ms on ext4 (it forces
# writeback) and wears flash; one aligned 512-byte pwrite does not.
_HEAD_SLOT = 512


def _encode_head(head: Head, gen: int) -> bytes:
    body: dict[str, Any] = {
        "gen": gen, "seq": head.seq, "hash": head.hash, "first_seq": head.first_seq,
        "file": {"dev": head.dev, "ino": head.ino, "size": head.size}, "ts": time.time(),
    }
    body["check"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return json.dumps(body, sort_keys=True).encode().ljust(_HEAD_SLOT - 1) + b"\n"


def _decode_head_slot(raw: bytes) -> tuple[int, Head] | None:
    try:
        d = json.loads(raw)
        check = d.pop("check")
        if hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest() != check:
            return None
        return int(d["gen"]), Head(
            seq=int(d["seq"]), hash=str(d["hash"]), first_seq=int(d["first_seq"]),
            dev=int(d["file"]["dev"]), ino=int(d["file"]["ino"]), size=int(d["file"]["size"]))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _load_head(path: Path) -> tuple[Head | None, int]:
    """(head, generation) of the log at `path`; (None, 0) when there is no head file."""
    hp = _sibling(path, ".head")
    try:
        with _open_read(hp) as f:
            raw = f.read(2 * _HEAD_SLOT + 1)
    except FileNotFoundError:
        return None, 0
    except OSError as exc:
        raise ValueError(f"{hp}: unreadable ({exc.strerror})") from None
    if not raw:
        return None, 0  # created, never written: a crash before the first record
    if len(raw) > 2 * _HEAD_SLOT:
        raise ValueError(f"{hp}: not a head file (longer than the {2 * _HEAD_SLOT} bytes of "
                         "its two slots)")
    slots = [_decode_head_slot(raw[i:i + _HEAD_SLOT]) for i in (0, _HEAD_SLOT)]
    valid = [s for s in slots if s is not None]
    if not valid:
        raise ValueError(f"{hp}: not a head file (no valid slot)")
    gen, head = max(valid, key=lambda s: s[0])
    return head, gen


def read_head(path: str | Path) -> Head | None:
    """The head of the log at `path` (from `path.head`); None when there is none.

    Raises:
        ValueError: the head file exists but holds no valid slot.
    """
    return _load_head(Path(path).expanduser())[0]


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """The audit record on one line, or None. NUL bytes before it are skipped: a crash on
    ext4/xfs can leave the space of records whose data never reached the disk as NULs."""
    try:
        rec = json.loads(raw.lstrip(b"\0"))
    except (ValueError, RecursionError):
        return None
    if (isinstance(rec, dict) and isinstance(rec.get("hash"), str)
            and isinstance(rec.get("prev"), str) and type(rec.get("seq")) is int):
        return rec
    return None


def _newlines_backward(fd: int, size: int) -> Iterator[int]:
    """Offsets of the newlines in the file, last first; reads each byte once."""
    pos = size
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        block = os.pread(fd, step, pos)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) >= 0:
            yield pos + i


@dataclass(frozen=True)
class _Tail:
    size: int
    good_end: int  # just past the last newline: what follows is a torn record
    seq: int | None  # of the last whole record (None: no record in the file)
    digest: str
    unterminated: bool = False  # the bytes after good_end are a whole record, only its
    # newline is missing: the line is ended, not cut


def _scan_tail(fd: int) -> _Tail:
    """The last whole record of the file, reading backwards only as far as it begins."""
    size = os.fstat(fd).st_size
    newlines = _newlines_backward(fd, size)
    end = next(newlines, None)
    good_end = 0 if end is None else end + 1
    while end is not None:
        start_nl = next(newlines, None)
        start = 0 if start_nl is None else start_nl + 1
        if end - start > MAX_LINE_BYTES:
            raise AuditError(f"the log's last record is {end - start} bytes, more than the "
                             f"{MAX_LINE_BYTES} this version reads back; rotate it by hand")
        rec = _parse_record(os.pread(fd, end - start, start)) if end > start else None
        if rec is not None:
            return _unterminated(fd, _Tail(size, good_end, rec["seq"], rec["hash"]))
        end = start_nl  # not a record (blank, or damage verify reports): look further back
    return _unterminated(fd, _Tail(size, good_end, None, GENESIS))


def _hash_of_seq(fd: int, end: int, seq: int, lines: int = 1024) -> str | None:
    """The hash of record `seq` among the last `lines` lines before offset `end` (just past a
    newline); None when it is not there (an earlier file, or too far back)."""
    newlines = _newlines_backward(fd, end)
    line_end = next(newlines, None)
    for _ in range(lines):
        if line_end is None:
            return None
        start_nl = next(newlines, None)
        start = 0 if start_nl is None else start_nl + 1
        if line_end - start > MAX_LINE_BYTES:
            return None
        rec = _parse_record(os.pread(fd, line_end - start, start)) if line_end > start else None
        if rec is not None and rec["seq"] <= seq:
            return str(rec["hash"]) if rec["seq"] == seq else None
        line_end = start_nl
    return None


def _unterminated(fd: int, tail: _Tail) -> _Tail:
    """`tail`, or the whole record after it that lacks only its newline (its hash holds and it
    links to the record before): a crash between a record's last byte and its newline, or a
    tool that strips the final newline. That record is kept, not cut as torn."""
    if not 0 < tail.size - tail.good_end <= MAX_LINE_BYTES:
        return tail
    rec = _parse_record(os.pread(fd, tail.size - tail.good_end, tail.good_end))
    if rec is None or record_hash(rec) != rec["hash"]:
        return tail
    if tail.seq is not None and (rec["prev"] != tail.digest or rec["seq"] != tail.seq + 1):
        return tail
    return _Tail(tail.size, tail.size, rec["seq"], rec["hash"], unterminated=True)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"it is {_file_kind(mode)}, not a regular file")


def _open_regular(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """os.open for a regular file only. Non-blocking until checked: opening a FIFO to read
    waits for a writer forever, and a FIFO or device may sit where a log file belongs."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        _require_regular(os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


def _open_read(path: Path) -> BinaryIO:
    """`path` opened to read, when it is a regular file (else OSError, never a hang)."""
    return os.fdopen(_open_regular(path, os.O_RDONLY), "rb")


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is down: a write may take only part (pipes, signals, quotas)."""
    view = memoryview(data)
    done = 0
    while done < len(data):
        n = os.write(fd, view[done:])
        if n <= 0:
            raise OSError(errno.EIO, f"write took no bytes ({done} of {len(data)} written)")
        done += n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the writer ---------------------------------------------------------------------------------


class AuditLog:
    """Appends decision records to a hash-chained JSONL file.

    Safe to share between threads; processes that open the same path write one chain (an
    flock on `LOG.lock` orders them). A record is written whole or `append` raises.

    Args:
        path: The log file (`~` expanded); its directory is created.
        fsync: fsync the log after every record and the head and directory after every
            rename (survives power loss; costs disk flushes per decision).
        max_bytes: Rotate before a record would take the file past this size (None: never).
        keep: Rotated files to keep; older ones are deleted (None: keep all).

    Raises:
        UsageError: the path cannot be opened.
        AuditError: a torn tail could not be repaired.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False, max_bytes: int | None = None,
                 keep: int | None = None) -> None:
        self.path = Path(path).expanduser()
        self.fsync = fsync
        if max_bytes is not None and max_bytes < 1:
            raise UsageError(f"audit.max_bytes = {max_bytes}: must be positive")
        if keep is not None and keep < 0:
            raise UsageError(f"audit.keep = {keep}: must be 0 or more")
        self.max_bytes, self.keep = max_bytes, keep
        self.head_path = _sibling(self.path, ".head")
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fd = self._lock_fd = -1
        self._ident = self._lock_ident = (0, 0)
        self._offset = 0  # where this writer's last record ended
        self._seq, self._prev = -1, GENESIS
        self._first_seq = 0
        self._head_fd = -1
        self._head_ident = (0, 0)
        self._head_gen = 0
        self._head_failed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._open_lock()
            # The file is opened under the lock: opened before it, it could be rotated away by
            # another writer while this one waits, and the chain adopted from a stale file.
            self._flock()
            try:
                existed = os.path.lexists(self.path)
                self._open_log()
                self._adopt(None if existed else "log file missing: created anew")
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except AuditError:
            self._close_fds()
            raise
        except OSError as exc:
            self._close_fds()
            raise UsageError(
                f"audit.path = {str(self.path)!r}: cannot open ({exc.strerror})"
            ) from None
        except BaseException:
            self._close_fds()
            raise

    @classmethod
    def from_config(cls, config: AuditConfig) -> AuditLog:
        """The log an `AuditConfig` describes (path, fsync, max_bytes, keep)."""
        return cls(config.path, fsync=config.fsync, max_bytes=config.max_bytes,
                   keep=config.keep)

    def append(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record and return it (with its seq, prev and hash).

        Raises:
            AuditError: the record could not be written whole (nothing of it stays in the log
                when the cut-back succeeds), or the log is closed.
        """
        body = json_safe(payload)  # outside the lock: a big payload does not stall others
        if not isinstance(body, dict):
            body = {"payload": body}
        kind_text = json_safe(str(kind) if not isinstance(kind, str) else kind)
        with self._locked():
            self._resync()
            return self._write_record(str(kind_text), body)

    def close(self) -> None:
        with self._lock:
            self._close_fds()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- file handling (all under the locks) ----------------------------------------------------

    def _open_lock(self) -> int:
        fd = os.open(_sibling(self.path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        self._lock_ident = (st.st_dev, st.st_ino)
        return fd

    def _flock(self) -> None:
        """Take `LOG.lock` exclusively: the file now at that path, not one deleted or replaced
        under this writer (a cleanup of stale files), which would exclude nobody."""
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        while not self._lock_is_current():
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            old_lock, self._lock_fd = self._lock_fd, self._open_lock()
            os.close(old_lock)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _lock_is_current(self) -> bool:
        """Whether the lock this writer holds is the file now at `LOG.lock`."""
        try:
            st = os.stat(_sibling(self.path, ".lock"))
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._lock_ident

    def _open_log(self) -> None:
        # A regular file only: a FIFO blocks the decision once its buffer fills, /dev/null
        # drops every record, and neither has a size the chain can be checked against.
        try:
            _require_regular(os.stat(self.path).st_mode)
        except FileNotFoundError:
            pass
        fd = _open_regular(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)

    def _close_fds(self) -> None:
        for fd in (self._fd, self._lock_fd, self._head_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._lock_fd = self._head_fd = -1

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._fd < 0:
                raise AuditError(f"{self.path}: audit log is closed")
            try:
                if os.getpid() != self._pid:
                    # A forked child shares the parent's lock description: flock would not
                    # keep them apart. Take descriptors of its own.
                    old_lock, self._lock_fd = self._lock_fd, self._open_lock()
                    os.close(old_lock)
                    self._open_log()
                    self._pid = os.getpid()
                self._flock()
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot lock the audit log ({exc})") from None
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _resync(self) -> None:
        """Make sure the next record goes to the file at the path, after its last record."""
        try:
            try:
                st: os.stat_result | None = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == self._ident:
                if st.st_size == self._offset:
                    return  # nobody touched it: the common case, two stat calls
                event = None if st.st_size > self._offset else (
                    f"log file truncated under the writer ({st.st_size} bytes, its records "
                    f"ended at {self._offset})")
            else:
                # Deleted, or another file at the path: a sibling writer's rotation (its head
                # then matches the new file's tail), logrotate, or someone's copy.
                event = ("log file deleted under the writer" if st is None
                         else "log file replaced under the writer")
                self._open_log()
            self._adopt(event)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot check the audit log ({exc})") from None

    def _adopt(self, event: str | None) -> None:
        """Take the chain from the file: cut a torn tail into evidence, and when the file does
        not end where the chain does (per this writer and the head), say so in a marker."""
        no_head = None  # why the head could not anchor the chain, when it could not
        try:
            head, gen = _load_head(self.path)
            self._head_gen = max(self._head_gen, gen)  # another writer may have moved it on
            if head is None:
                no_head = (f"{self.head_path.name} is empty" if self.head_path.exists()
                           else f"no head file ({self.head_path.name})")
        except ValueError as exc:
            log.warning("audit: %s; it will be rewritten", exc)
            head, no_head = None, str(exc).replace(str(self.head_path), self.head_path.name)
        known_seq, known_hash = self._seq, self._prev
        if head is not None and head.seq >= known_seq:
            known_seq, known_hash = head.seq, head.hash
            self._first_seq = head.first_seq
        tail = _scan_tail(self._fd)
        markers: list[tuple[str, dict[str, Any]]] = []
        if tail.size > tail.good_end:
            markers.append(("repair", self._cut_torn_tail(tail)))
        elif tail.unterminated:
            markers.append(("repair", self._end_line(tail)))
        self._offset = tail.good_end + (1 if tail.unterminated else 0)
        unanchored = None
        if no_head is not None and known_seq < 0:
            # Nothing anchors the chain's end: a cut tail cannot be told from a whole log. The
            # chain says so, so that writing a new head does not erase the fact.
            if tail.seq is None:
                known_seq, known_hash, source = self._newest_rotated_tail()
            else:
                known_seq, known_hash, source = tail.seq, tail.digest, self.path.name
            if known_seq >= 0:
                unanchored = (f"{no_head}: the chain goes on from {source} (seq {known_seq}); "
                              "records cut from its end together with the head would not show")
        writer_head = {"seq": known_seq, "hash": known_hash}
        if unanchored:
            event = f"{event}; {unanchored}" if event else unanchored
        if tail.seq is None:
            self._seq, self._prev = known_seq, known_hash
            if known_seq >= 0:  # a chain exists, but not in this file: it is new or emptied
                markers.append(("reopen", {
                    "reason": event or f"log file empty, but its head says the chain reached "
                                       f"seq {known_seq}",
                    "writer_head": writer_head, "found": None}))
        else:
            self._seq, self._prev = tail.seq, tail.digest
            behind = tail.seq < known_seq or (tail.seq == known_seq and tail.digest != known_hash)
            if not behind and tail.seq > known_seq >= 0:
                # Records after the chain's known end (a writer stopped before its head, or
                # another appended): the record at that end must still be the one known.
                found_hash = _hash_of_seq(self._fd, tail.good_end, known_seq)
                if found_hash is not None and found_hash != known_hash:
                    behind = True
                    event = event or (f"record seq {known_seq} is not the one the chain had "
                                      f"(hash {found_hash[:16]}..., known {known_hash[:16]}...):"
                                      " the log was rewritten")
            if behind or unanchored:
                markers.append(("reopen", {
                    "reason": event or "log file ends before its head",
                    "writer_head": writer_head,
                    "found": {"seq": tail.seq, "hash": tail.digest}}))
        for kind, payload in markers:
            self._write_record(kind, payload)

    def _newest_rotated_tail(self) -> tuple[int, str, str]:
        """(seq, hash, file name) of the last record of the newest rotated file; (-1, GENESIS,
        "") when there is none. Where the chain goes on when the log file is empty or missing
        and no head says (a crash between a rotation's rename and the new file)."""
        for older in reversed(rotated_files(self.path)):
            try:
                fd = _open_regular(older, os.O_RDONLY)
            except OSError:
                continue
            try:
                tail = _scan_tail(fd)
            finally:
                os.close(fd)
            if tail.seq is not None:
                return tail.seq, tail.digest, older.name
        return -1, GENESIS, ""

    def _end_line(self, tail: _Tail) -> dict[str, Any]:
        """Write the newline a whole last record lacks, so the next record starts a line."""
        try:
            _write_all(self._fd, b"\n")
        except OSError as exc:
            raise AuditError(f"{self.path}: the last record lacks its newline, which could not "
                             f"be written: {exc.strerror or exc}") from None
        log.warning("audit: %s: the last record lacked its newline; added", self.path)
        return {"reason": "the last record lacked its newline (a crash between its last byte "
                          "and the newline, or a tool that strips it); the line was ended",
                "newline": {"offset": tail.size, "seq": tail.seq}}

    def _cut_torn_tail(self, tail: _Tail) -> dict[str, Any]:
        """Copy the bytes after the last whole record into `LOG.torn-NS`, then cut them off."""
        stamp = time.time_ns()
        evidence = _sibling(self.path, f".torn-{stamp}")
        sha = hashlib.sha256()
        try:
            for n in range(1, 1000):  # a clock stepped back can repeat a name: never overwrite
                try:
                    out = os.open(evidence, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                  0o644)
                    break
                except FileExistsError:
                    evidence = _sibling(self.path, f".torn-{stamp}-{n}")
            else:
                raise OSError(errno.EEXIST, "no free evidence file name")
            try:
                pos = tail.good_end
                while pos < tail.size:
                    chunk = os.pread(self._fd, min(1 << 20, tail.size - pos), pos)
                    if not chunk:
                        break
                    sha.update(chunk)
                    _write_all(out, chunk)
                    pos += len(chunk)
                if self.fsync:
                    os.fsync(out)
            finally:
                os.close(out)
            os.ftruncate(self._fd, tail.good_end)
        except OSError as exc:
            raise AuditError(
                f"{self.path}: the log ends in a torn record ({tail.size - tail.good_end} "
                f"bytes) that could not be moved to {evidence.name}: {exc}") from None
        log.warning("audit: %s ended in a torn record; %d bytes moved to %s", self.path,
                    tail.size - tail.good_end, evidence.name)
        return {"reason": "torn tail: a writer stopped mid-record",
                "torn": {"offset": tail.good_end, "bytes": tail.size - tail.good_end,
                         "sha256": sha.hexdigest(), "evidence": evidence.name}}

    def _write_record(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        seq = self._seq + 1
        # The chain fields are set last so a payload can never overwrite them.
        record = dict(body)
        record.update(seq=seq, ts=time.time(), kind=kind, prev=self._prev)
        record["hash"] = record_hash(record)
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode() + b"\n"
        if self.max_bytes is not None and 0 < self._offset and (
                self._offset + len(line) > self.max_bytes):
            self._rotate()
        start = self._offset
        try:
            _write_all(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            raise AuditError(self._cut_back(start, len(line), exc)) from None
        self._offset = start + len(line)
        self._seq, self._prev = seq, record["hash"]
        self._write_head()
        return record

    def _cut_back(self, start: int, length: int, exc: OSError) -> str:
        """Remove a record's partial bytes; the message for the AuditError."""
        why = exc.strerror or str(exc)
        try:
            os.ftruncate(self._fd, start)
        except OSError as cut_exc:
            # The next append (or open) sees the torn tail and moves it into evidence.
            return (f"{self.path}: audit record ({length} bytes) not written: {why}; the "
                    f"partial record could not be removed ({cut_exc.strerror})")
        return f"{self.path}: audit record ({length} bytes) not written: {why}"

    def _rotate(self) -> None:
        """Move the log to `LOG.N` and start a new file; the chain goes on into it."""
        try:
            older = rotated_files(self.path)
            target = _next_rotated_name(self.path)
            os.rename(self.path, target)
            self._open_log()
            self._offset = 0
            if self.fsync:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot rotate the audit log ({exc})") from None
        if self.keep is not None:
            rotated = [*older, target]
            doomed = rotated[: max(0, len(rotated) - self.keep)]
            if doomed:
                survivors = rotated[len(doomed):]
                first = _first_seq(survivors[0]) if survivors else None
                # The head learns the new oldest seq before the files go, so a crash between
                # the two never makes pruning look like deletion.
                self._first_seq = first if first is not None else self._seq + 1
                self._write_head()
                for f in doomed:
                    try:
                        f.unlink()
                    except OSError as exc:
                        log.warning("audit: cannot delete rotated %s: %s", f, exc)

    def _write_head(self) -> None:
        head = Head(seq=self._seq, hash=self._prev, first_seq=self._first_seq,
                    dev=self._ident[0], ino=self._ident[1], size=self._offset)
        try:
            try:
                st: os.stat_result | None = os.stat(self.head_path)
            except FileNotFoundError:
                st = None
            if self._head_fd < 0 or st is None or (st.st_dev, st.st_ino) != self._head_ident:
                # First write, or the head was deleted or replaced: write to the one at the path.
                if self._head_fd >= 0:
                    os.close(self._head_fd)
                    self._head_fd = -1
                fd = _open_regular(self.head_path, os.O_RDWR | os.O_CREAT)
                self._head_fd = fd
                if self.fsync:
                    _fsync_dir(self.path.parent)
                hst = os.fstat(fd)
                self._head_ident = (hst.st_dev, hst.st_ino)
                try:
                    self._head_gen = max(self._head_gen, _load_head(self.path)[1])
                except ValueError:
                    os.ftruncate(fd, 0)  # not a head (too long, no valid slot): start it anew
            gen = self._head_gen + 1
            data, offset = _encode_head(head, gen), (gen % 2) * _HEAD_SLOT
            done = 0
            while done < len(data):
                n = os.pwrite(self._head_fd, data[done:], offset + done)
                if n <= 0:
                    raise OSError(errno.EIO, "head write took no bytes")
                done += n
            if self.fsync:
                os.fsync(self._head_fd)
            self._head_gen = gen
            self._head_failed = False
        except OSError as exc:
            # The record itself is in the log; the anchor lags until the next append. verify
            # then reports records after the head (a note), never a lost decision.
            if not self._head_failed:
                log.warning("audit: cannot update %s: %s", self.head_path, exc)
            self._head_failed = True


def _first_seq(path: Path) -> int | None:
    try:
        with _open_read(path) as f:
            raw = f.readline(MAX_LINE_BYTES)
    except OSError:
        return None
    rec = _parse_record(raw)
    return None if rec is None else int(rec["seq"])


# -- verification -------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """What `verify` found.

    `ok` is False when any problem was found; `line`, `reason` and `file` locate the first.
    `records` counts the records verified before the first problem (all of them when ok).
    `notes` are events the chain records that are not damage (a repaired torn tail, a log
    continued after rotation elsewhere, no head file).
    """

    ok: bool
    records: int
    line: int | None = None  # 1-based line of the first problem, in `file`
    reason: str = ""
    file: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    total: int = 0  # records read, including those after a problem

    def describe(self, path: str | Path) -> str:
        """One summary line, then one line per problem and per note."""
        span = f" in {len(self.files)} files" if len(self.files) > 1 else ""
        path = _one_line(str(path))  # a file name is text from outside too
        if self.ok:
            lines = [f"{path}: OK, {self.records} records{span}, chain intact"]
        else:
            lines = [f"{path}: FAILED: {len(self.problems)} problem(s); {self.records} "
                     f"records{span} verified before the first"]
            lines += [f"problem: {p}" for p in self.problems]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


_BOM = b"\xef\xbb\xbf"
_LOCK_WAIT_S = 5.0  # how long verify waits for writers to let it take a consistent snapshot
_CONTROL = re.compile("[\x00-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _one_line(text: str) -> str:
    """`text` with control characters escaped: a field of a forged record cannot add lines
    to verify's output, one line per problem."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                        else f"\\u{ord(m.group()):04x}", text)


def _lines(f: BinaryIO, limit: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line of the first `limit` bytes (all when None); None for a
    line longer than MAX_LINE_BYTES (skipped without holding it)."""
    n = 0
    left = limit

    def read(size: int) -> bytes:
        nonlocal left
        raw = f.readline(size if left is None else min(size, left))
        if left is not None:
            left -= len(raw)
        return raw

    while left is None or left > 0:
        raw = read(MAX_LINE_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (chunk := read(1 << 20)) and not chunk.endswith(b"\n"):
                pass
            yield n, None
        else:
            yield n, raw


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _read_json(raw: bytes) -> tuple[Any, str | None]:
    """(the line's JSON value, None), or (None, what keeps it from being read, and where)."""
    try:
        return json.loads(raw), None
    except UnicodeDecodeError as exc:
        return None, (f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at byte {exc.start + 1} "
                      "of the line")
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"
    except RecursionError:
        return None, "not readable JSON: nested too deep"
    except ValueError as exc:  # an integer past int()'s digit limit, for one
        return None, f"not readable JSON: {str(exc).split(';')[0]}"


def _record_shape(value: Any) -> str | None:
    """Why a JSON value is not an audit record; None when it has the chain's fields."""
    if not isinstance(value, dict):
        return f"a JSON {_json_kind(value)} where a record (an object) belongs"
    for key in ("hash", "prev"):
        if key not in value:
            return f"no {key} field"
        if not isinstance(value[key], str):
            return f"its {key} is a JSON {_json_kind(value[key])}, not a string"
    return None


def _hash_holds(rec: dict[str, Any]) -> tuple[bool, bytes]:
    """(whether the record's hash is that of its canonical JSON, its canonical line), with one
    encoding: the body's canonical JSON is the line less its top-level `"hash":...` member (the
    first one: an earlier copy nested in the payload would have to contain the record's own
    hash, so it only makes a forged record fail)."""
    line = _canonical(rec)
    member = b'"hash":' + _CANONICAL.encode(rec["hash"]).encode()
    i = line.find(member)
    j = i + len(member)
    if line[i - 1:i] == b",":
        body = line[:i - 1] + line[j:]
    elif line[j:j + 1] == b",":
        body = line[:i] + line[j + 1:]
    else:
        body = line[:i] + line[j:]
    return hashlib.sha256(body).hexdigest() == rec["hash"], line


def _duplicate_keys(raw: bytes) -> set[str]:
    """Keys that appear twice in one object of the line (readers disagree on which counts)."""
    dups: set[str] = set()

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                dups.add(key)
            seen.add(key)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        pass
    return dups


def _reencoding(line: bytes, canonical: bytes) -> str:
    """How a line that holds the same record differs from the bytes the writer wrote."""
    hows = []
    if line.startswith(_BOM):
        hows.append("a byte order mark")
        line = line[len(_BOM):]
    if line.endswith(b"\r"):
        hows.append("CRLF line endings")
        line = line[:-1]
    if line != canonical:
        hows.append("spacing, key order or escapes not the writer's")
    return " and ".join(hows)


class _Walk:
    def __init__(self, head: Head | None) -> None:
        self.head = head
        self.result = VerifyResult(ok=True, records=0)
        self.prev: str | None = None  # None after damage: the next link is not judged
        self.expected_seq: int | None = None
        self.started = False
        self.last_seq: int | None = None
        self.hash_at_head: str | None = None
        # per file: how lines were re-encoded -> [problem index, first line, count]
        self.reencoded: dict[str, list[int]] = {}

    def problem(self, where: str, line: int | None, reason: str) -> None:
        r = self.result
        if r.ok:
            r.ok, r.line, r.reason, r.file, r.records = False, line, reason, where, r.total
        if len(r.problems) < _MAX_PROBLEMS:
            text = f"{where}: line {line}: {reason}" if line else f"{where}: {reason}"
            r.problems.append(_one_line(text))
        elif len(r.problems) == _MAX_PROBLEMS:
            r.problems.append("... further problems not listed")

    def note(self, text: str) -> None:
        self.result.notes.append(_one_line(text))

    def damage(self, where: str, line: int | None, reason: str) -> None:
        """A problem after which the next record's link and seq cannot be judged."""
        self.problem(where, line, reason)
        self.prev = self.expected_seq = None

    def file(self, where: str, f: BinaryIO, last: bool, limit: int | None) -> None:
        self.reencoded = {}
        n = 0
        try:
            for n, raw in _lines(f, limit):
                self.line(where, n, raw, last)
        except OSError as exc:
            self.damage(where, n + 1, f"read error: {exc.strerror or exc}")
        for how, (index, first, count) in self.reencoded.items():
            if count > 1 and index < len(self.result.problems):
                reason = self.reencoded_reason(how, count)
                self.result.problems[index] = _one_line(f"{where}: line {first}: {reason}")
                if index == 0:
                    self.result.reason = reason

    @staticmethod
    def reencoded_reason(how: str, count: int) -> str:
        more = f" (and {count - 1} more lines of this file)" if count > 1 else ""
        return (f"re-encoded with {how}{more}: the file was rewritten by another tool; each "
                "record's content and the chain are intact")

    def line(self, where: str, n: int, raw: bytes | None, last: bool) -> None:
        if raw is None:
            self.damage(where, n, f"line longer than {MAX_LINE_BYTES} bytes: not read")
            return
        body = raw.lstrip(b"\0")
        nuls = len(raw) - len(body)
        ended = raw.endswith(b"\n")
        if not body.strip() and not nuls:
            self.reencoded_line(where, n, "blank lines")  # the writer never writes one
            return
        if not ended and last:
            rec = _parse_record(raw)
            if rec is not None and record_hash(rec) == rec["hash"] and not nuls:
                self.record(where, n, raw)
                self.note(f"{where}: line {n}: the last record lacks its newline (it is whole; "
                          "the next writer to open the log ends the line)")
                return
            what = (f"{nuls} NUL bytes" + (f" and {len(body)} bytes of a record" if body else "")
                    + ": a crash saved the file's size but not its data" if nuls
                    else f"{len(raw)} bytes, no newline: a writer stopped mid-record")
            self.damage(where, n, f"torn last record ({what}); the next writer to open the log "
                                  "moves it to evidence and continues the chain")
            return
        if nuls:
            self.damage(where, n, f"{nuls} NUL bytes " + (
                "before a record" if body.strip() else "where records were")
                + ": a crash saved the file's size but not its data; what was there is lost")
            if not body.strip():
                return
        self.record(where, n, body, cut=not ended)

    def record(self, where: str, n: int, raw: bytes, cut: bool = False) -> None:
        rec, unreadable = _read_json(raw)
        if unreadable is not None:
            self.damage(where, n, unreadable + (" (the file ends mid-record)" if cut else ""))
            return
        shape = _record_shape(rec)
        if shape is not None:
            self.damage(where, n, f"not an audit record: {shape}")
            return
        seq = rec.get("seq")
        reasons = []
        if not self.started:
            self.started = True
            if rec["prev"] != GENESIS:
                self.chain_start(where, n, seq)
        elif self.prev is not None and rec["prev"] != self.prev:
            reasons.append("chain broken: prev does not match the record before")
        hash_holds, canonical = _hash_holds(rec)
        if not hash_holds:
            reasons.append("hash mismatch: the record was edited")
        if type(seq) is not int:
            reasons.append(f"seq {json.dumps(seq)[:40]} is not an integer")
        elif self.expected_seq is not None and seq != self.expected_seq:
            reasons.append(f"seq {seq} != {self.expected_seq}")
        if reasons:
            self.problem(where, n, "; ".join(reasons))
        else:
            self.encoding(where, n, raw, canonical)
        self.result.total += 1
        self.prev = rec["hash"]
        self.expected_seq = seq + 1 if type(seq) is int else None
        if type(seq) is int:
            self.last_seq = seq
            if self.head is not None and seq == self.head.seq:
                self.hash_at_head = rec["hash"]
        kind = rec.get("kind")
        if kind == "repair":
            self.repair(where, n, rec)
        elif kind == "reopen":
            self.reopen(where, n, rec)

    def encoding(self, where: str, n: int, raw: bytes, canonical: bytes) -> None:
        """The line must be the bytes the writer wrote: its canonical JSON. Same content in
        other bytes is a rewrite; a key written twice is worse (readers take different ones)."""
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line == canonical:
            return
        dups = _duplicate_keys(line)
        if dups:
            names = ", ".join(sorted(dups))
            self.problem(where, n, f"duplicate key(s) {names[:200]}: JSON readers disagree on "
                                   "which value counts (the writer never writes a key twice)")
            return
        self.reencoded_line(where, n, _reencoding(line, canonical))

    def reencoded_line(self, where: str, n: int, how: str) -> None:
        """A line in other bytes than the writer's, reported once per file and kind."""
        seen = self.reencoded.get(how)
        if seen is not None:
            seen[2] += 1
            return
        self.reencoded[how] = [len(self.result.problems), n, 1]
        self.problem(where, n, self.reencoded_reason(how, 1))

    def chain_start(self, where: str, n: int, seq: object) -> None:
        first = self.head.first_seq if self.head is not None else None
        if type(seq) is int and first is not None and seq > first:
            self.problem(where, n, f"records seq {first}..{seq - 1} missing: the log starts at "
                                   f"seq {seq}, its head says the oldest kept record is seq "
                                   f"{first}")
        elif first is not None and first > 0 and seq == first:
            self.note(f"{where}: line {n}: the log starts at seq {seq}: older rotated files "
                      "were pruned (audit.keep)")
        else:
            self.note(f"{where}: line {n}: the log starts at seq {seq}, after earlier records "
                      "that are not in it (rotated away, or in files not given)")

    def repair(self, where: str, n: int, rec: dict[str, Any]) -> None:
        newline = rec.get("newline")
        if isinstance(newline, dict):
            self.note(f"{where}: line {n}: the last record lacked its newline; the writer added "
                      f"it at offset {newline.get('offset')}")
            return
        torn = rec.get("torn")
        if not isinstance(torn, dict):
            torn = {}
        name = str(torn.get("evidence", ""))
        state = "evidence file missing"
        if not name or "/" in name or "\0" in name or name in (".", ".."):
            state = f"evidence name {name[:80]!r} is not a file name"
        else:
            evidence = Path(where).with_name(name)
            try:
                sha = hashlib.sha256()
                with _open_read(evidence) as f:
                    while chunk := f.read(1 << 20):
                        sha.update(chunk)
                state = ("kept in " + name if sha.hexdigest() == torn.get("sha256")
                         else f"evidence file {name} does not match the recorded sha256")
            except FileNotFoundError:
                pass
            except OSError as exc:
                state = f"evidence file {name} unreadable ({exc.strerror or exc})"
        self.note(f"{where}: line {n}: torn tail repaired: {torn.get('bytes')} bytes cut at "
                  f"offset {torn.get('offset')} (sha256 {str(torn.get('sha256'))[:16]}...), "
                  f"{state}")

    def reopen(self, where: str, n: int, rec: dict[str, Any]) -> None:
        wh = rec.get("writer_head") if isinstance(rec.get("writer_head"), dict) else None
        found = rec.get("found") if isinstance(rec.get("found"), dict) else None
        reason = str(rec.get("reason", ""))[:500]
        if wh is not None and wh.get("hash") != rec["prev"]:
            ends = found.get("seq") if found else None
            self.problem(where, n, f"records lost or rewritten: the writer's chain had "
                                   f"reached seq {wh.get('seq')} (hash "
                                   f"{str(wh.get('hash'))[:16]}...), the log it found ended at "
                                   f"seq {ends}: {reason}")
        else:
            self.note(f"{where}: line {n}: writer reopened the log: {reason}")

    def check_head(self, where: str, head_empty: bool) -> None:
        h = self.head
        if h is None:
            self.note(f"head file {where}.head is empty (created, but no write of it reached "
                      "the disk): a cut tail would go unnoticed" if head_empty else
                      f"no head file ({where}.head): a cut tail would go unnoticed")
            return
        ends = -1 if self.last_seq is None else self.last_seq
        if ends < h.seq:
            self.problem(where, None, f"tail truncated: head says {h.seq + 1} records / hash "
                                      f"{h.hash[:16]}..., log ends at {ends + 1}")
        elif self.hash_at_head != h.hash:
            self.problem(where, None, f"record seq {h.seq} does not match the head (hash "
                                      f"{str(self.hash_at_head)[:16]}..., head says "
                                      f"{h.hash[:16]}...): the log was rewritten")
        elif ends > h.seq:
            self.note(f"{where}: {ends - h.seq} record(s) after the head's seq {h.seq} (a "
                      "writer stopped between a record and its head)")


@dataclass
class _Snapshot:
    """The log's files opened, its size and its head read, together."""

    files: list[tuple[Path, BinaryIO | None]] = field(default_factory=list)  # None: open later
    log_size: int | None = None  # None: the log file is missing or unreadable
    log_missing: bool = False
    head: Head | None = None
    head_error: str | None = None
    head_empty: bool = False
    unlocked: str | None = None  # why the writers' lock was not taken


def _snapshot(p: Path) -> _Snapshot:
    """Open the log's files and read its head under the writers' lock (shared, held only for
    this), so a writer rotating or pruning meanwhile does not show as damage: open files stay
    readable when renamed or deleted, and the log is read only as far as it went then."""
    snap = _Snapshot()
    lock_name = _sibling(p, ".lock").name
    try:
        lock_fd = os.open(_sibling(p, ".lock"), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        lock_fd = -1  # no writer ever opened this log
    except OSError as exc:
        lock_fd, snap.unlocked = -1, f"cannot open {lock_name} ({exc.strerror})"
    try:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while lock_fd >= 0:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    snap.unlocked = f"a writer held {lock_name} for {_LOCK_WAIT_S:.0f} s"
                    break
                time.sleep(0.005)
            except OSError as exc:
                snap.unlocked = f"cannot lock {lock_name} ({exc.strerror})"
                break
        for f in [*rotated_files(p), p]:
            try:
                fh: BinaryIO | None = _open_read(f)
            except FileNotFoundError:
                if f == p:
                    snap.log_missing = True  # reported against the head
                    continue
                fh = None
            except OSError:
                fh = None  # opened again when reached, to report why it cannot be read
            if f == p and fh is not None:
                snap.log_size = os.fstat(fh.fileno()).st_size
            snap.files.append((f, fh))
        try:
            snap.head = read_head(p)
            hp = _sibling(p, ".head")
            snap.head_empty = snap.head is None and hp.exists()
        except ValueError as exc:
            snap.head_error = str(exc)
    except BaseException:
        for _, fh in snap.files:
            if fh is not None:
                fh.close()
        raise
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    return snap


def verify(path: str | Path) -> VerifyResult:
    """Walk the chain of the log at `path` and its rotated files, and check it against its head.

    Reads line by line (time linear in the log's size, memory bounded by `MAX_LINE_BYTES`) and
    reports every problem, not only the first. A writer may append meanwhile: the files are
    taken as they were at one moment, under the writers' lock.

    Raises:
        UsageError: there is no log at `path` (no log file, rotated file or head), or `path` is
            not a regular file.
    """
    p = Path(path).expanduser()
    try:
        mode: int | None = os.stat(p).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UsageError(f"{p}: cannot read ({exc.strerror})") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"{p}: it is {_file_kind(mode)}, not an audit log file")
    snap = _snapshot(p)
    present = [f for f, _ in snap.files]
    if snap.log_missing and not present and not _sibling(p, ".head").exists():
        raise UsageError(f"{p}: audit file not found")
    walk = _Walk(snap.head)
    walk.result.files = [str(f) for f in present]
    for f, fh in snap.files:
        if fh is None:
            try:
                fh = _open_read(f)
            except OSError as exc:
                gone = " (deleted while verify ran)" if exc.errno == errno.ENOENT else ""
                walk.damage(str(f), None, f"cannot read: {exc.strerror or exc}{gone}")
                continue
        try:
            walk.file(str(f), fh, last=f == p, limit=snap.log_size if f == p else None)
        finally:
            fh.close()
    if snap.unlocked:
        walk.note(f"{snap.unlocked}: read without it; a rotation meanwhile may show as damage "
                  "(run verify again)")
    if snap.log_missing:
        _log_missing(walk, p, present)
    if snap.head_error:
        walk.problem(str(p), None, snap.head_error)
    elif snap.log_size is not None or (snap.log_missing and snap.head is not None):
        walk.check_head(str(p), snap.head_empty)  # (an unreadable log is reported as such)
    r = walk.result
    if r.ok:
        r.records = r.total
    return r


def _log_missing(walk: _Walk, p: Path, present: list[Path]) -> None:
    """The log file is gone: fine only when the rotated files end where the head says (a
    rotation stopped between renaming the log and creating the next file)."""
    h = walk.head
    if h is not None and present and walk.last_seq == h.seq and walk.hash_at_head == h.hash:
        walk.note(f"{p}: the log file is missing, but the chain ends in {present[-1].name} "
                  "where its head says (a rotation stopped between renaming the log and "
                  "creating the next; the next writer creates it)")
    elif h is not None:
        walk.problem(str(p), None, "the log file is missing")
    else:
        walk.problem(str(p), None, "the log file is missing, and no head file says where the "
                                   "chain ended")
