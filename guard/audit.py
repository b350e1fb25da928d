"""The audit log: append-only JSONL, one record per decision, hash-chained.

Each record carries `prev` (the previous record's hash) and `hash` (SHA-256 of the record's
canonical JSON without `hash`). Editing, deleting or reordering a record breaks the chain at
that record, which `verify` reports. Records are flushed one by one (and fsynced if asked), so
a crash loses at most the record being written.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import UsageError

GENESIS = "0" * 64


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _last_record(path: Path) -> tuple[int, str]:
    """(seq, hash) of the last complete record, reading only the file's tail."""
    size = path.stat().st_size
    if size == 0:
        return -1, GENESIS
    with path.open("rb") as f:
        block = 1 << 16
        pos, tail = size, b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            lines = [ln for ln in tail.split(b"\n") if ln.strip()]
            # The first line of the buffer may be cut; a later one is whole.
            for raw in reversed(lines[1:] if pos > 0 else lines):
                try:
                    rec = json.loads(raw)
                    return int(rec["seq"]), str(rec["hash"])
                except (ValueError, KeyError, TypeError):
                    continue
    return -1, GENESIS


class AuditLog:
    """Appends decision records to a hash-chained JSONL file. Thread-safe."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._seq, self._prev = (
                _last_record(self.path) if self.path.exists() else (-1, GENESIS)
            )
            self._file = self.path.open("ab", buffering=0)
        except OSError as exc:
            raise UsageError(
                f"audit.path = {str(self.path)!r}: cannot open ({exc.strerror})"
            ) from None

    def append(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Write one record and return it (with its seq and hash)."""
        with self._lock:
            seq, digest = self._seq + 1, ""
            # The chain fields are set last so a payload can never overwrite them.
            record: dict[str, Any] = dict(payload)
            record.update(seq=seq, ts=time.time(), kind=kind, prev=self._prev)
            digest = record["hash"] = record_hash(record)
            self._file.write(_canonical(record) + b"\n")  # unbuffered: one write per record
            if self.fsync:
                os.fsync(self._file.fileno())
            self._seq, self._prev = seq, digest
            return record

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class VerifyResult:
    ok: bool
    records: int
    line: int | None = None  # 1-based line of the first broken record
    reason: str = ""

    def describe(self, path: str | Path) -> str:
        if self.ok:
            return f"{path}: OK, {self.records} records, chain intact"
        return (
            f"{path}: line {self.line}: {self.reason} "
            f"({self.records} records verified before it)"
        )


def verify(path: str | Path) -> VerifyResult:
    """Walk the chain; report the first record whose hash or link does not hold."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: audit file not found")
    prev, count, expected_seq = GENESIS, 0, 0
    with p.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                return VerifyResult(False, count, n, "not valid JSON (truncated or edited)")
            if not isinstance(rec, dict) or "hash" not in rec or "prev" not in rec:
                return VerifyResult(False, count, n, "not an audit record (no hash/prev)")
            if rec["prev"] != prev:
                return VerifyResult(
                    False, count, n, "chain broken: prev does not match the record before"
                )
            if record_hash(rec) != rec["hash"]:
                return VerifyResult(False, count, n, "hash mismatch: the record was edited")
            if rec.get("seq") != expected_seq:
                return VerifyResult(False, count, n, f"seq {rec.get('seq')} != {expected_seq}")
            prev, count, expected_seq = rec["hash"], count + 1, expected_seq + 1
    return VerifyResult(True, count)
