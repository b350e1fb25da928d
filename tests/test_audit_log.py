"""The audit log under hostile conditions: short writes, torn tails, two writers, a cut tail,
a deleted or replaced file, rotation, oversized and non-JSON payloads (issue 11, item 7).

Every test drives the real `AuditLog` on real files; the multi-writer tests use real processes.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from guard import audit as audit_mod
from guard.audit import AuditLog, read_head, verify
from guard.errors import AuditError, GuardError

ROOT = Path(__file__).resolve().parents[1]


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_log(path: Path, n: int, **kw) -> None:
    with AuditLog(path, **kw) as log:
        for i in range(n):
            log.append("decision", {"decision": {"id": f"d{i}", "verdict": "veto"}})


def strict_json(raw: str) -> dict:
    """json.loads that refuses NaN/Infinity, which json.dumps writes by default."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON token {token}")
    return json.loads(raw, parse_constant=refuse)


# -- 1. short writes ----------------------------------------------------------------------------


def test_a_short_write_raises_and_leaves_no_cut_record(tmp_path, monkeypatch):
    p = tmp_path / "a.jsonl"
    write_log(p, 2)
    real_write = os.write
    calls = []

    def disk_fills(fd: int, data) -> int:
        # the first call writes half the record, the second finds the disk full
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with AuditLog(p) as log:
        monkeypatch.setattr(audit_mod.os, "write", disk_fills)
        with pytest.raises(AuditError, match="No space left"):
            log.append("decision", {"decision": {"id": "cut", "verdict": "allow"}})
        monkeypatch.setattr(audit_mod.os, "write", real_write)
        assert len(calls) == 2  # it looped on the short write before giving up
        log.append("decision", {"decision": {"id": "after", "verdict": "veto"}})
    r = verify(p)
    assert r.ok, r.describe(p)
    assert [x["decision"]["id"] for x in records(p)] == ["d0", "d1", "after"]
    assert issubclass(AuditError, GuardError) and issubclass(AuditError, OSError)


def test_a_write_that_returns_fewer_bytes_is_completed(tmp_path, monkeypatch):
    p = tmp_path / "a.jsonl"
    real_write = os.write

    def dribble(fd: int, data) -> int:
        return real_write(fd, bytes(data[:7]))  # a pipe-like writer: 7 bytes per call

    with AuditLog(p) as log:
        monkeypatch.setattr(audit_mod.os, "write", dribble)
        log.append("decision", {"decision": {"id": "slow", "verdict": "allow"}})
        monkeypatch.setattr(audit_mod.os, "write", real_write)
    assert verify(p).ok and records(p)[0]["decision"]["id"] == "slow"


FSIZE_SCRIPT = textwrap.dedent("""
    import json, os, resource, sys, time
    import numpy as np
    from guard.backends.scripted import ScriptedBackend
    from guard.config import GuardConfig
    from guard.core import Guard
    from guard.types import ActionProposal, Frame

    path = sys.argv[1]
    config = GuardConfig().with_overrides(**{"audit.path": path, "model.backend": "scripted"})
    allow = "ALLOW\\nrisk: 0.0"
    guard = Guard(config, backend=ScriptedBackend.answering(allow, allow))
    def frame():
        return Frame(image=np.zeros((32, 32, 3), np.uint8), stamp=time.time(), source="t")
    first = guard.check(frame(), ActionProposal(name="warm_up", description="x"))
    assert first.verdict.value == "allow", first
    # The file may grow by 300 bytes: the next record (with a 4 kB action) cannot fit whole.
    limit = os.path.getsize(path) + 300
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    d = guard.check(frame(), ActionProposal(name="move_arm", description="y" * 4000))
    print(json.dumps({"verdict": d.verdict.value, "status": d.status.value,
                      "error": d.error, "size": os.path.getsize(path), "limit": limit}))
""")


def test_a_file_size_limit_gives_an_error_veto_and_an_intact_log(tmp_path):
    """The measured defect: RLIMIT_FSIZE cut the record and the check still returned ALLOW."""
    p = tmp_path / "a.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(p)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["verdict"], out["status"]) == ("veto", "error"), out
    assert "audit write failed" in out["error"]
    # What could not be written whole was cut back: the log is one intact record.
    res = verify(p)
    assert res.ok and res.records == 1, res.describe(p)
    assert out["size"] < out["limit"]


# -- 2. torn tails --------------------------------------------------------------------------------


def test_a_torn_tail_is_moved_to_evidence_and_the_chain_goes_on(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    torn = b'{"decision":{"id":"d3","verdict":"allo'  # a writer died mid-record
    with p.open("ab") as f:
        f.write(torn)
    assert not verify(p).ok
    write_log(p, 1)  # reopening repairs, then appends
    res = verify(p)
    assert res.ok, res.describe(p)
    recs = records(p)
    assert [r["kind"] for r in recs] == ["decision"] * 3 + ["repair", "decision"]
    marker = recs[3]["torn"]
    assert marker["bytes"] == len(torn)
    assert marker["sha256"] == hashlib.sha256(torn).hexdigest()
    evidence = tmp_path / marker["evidence"]
    assert evidence.read_bytes() == torn
    assert recs[3]["prev"] == recs[2]["hash"] and recs[4]["prev"] == recs[3]["hash"]
    text = res.describe(p)
    assert "torn tail repaired" in text and f"{len(torn)} bytes" in text


def test_a_torn_tail_left_by_another_writer_is_repaired_before_appending(tmp_path):
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        log.append("decision", {"n": 0})
        with p.open("ab") as f:  # a second writer that crashed mid-record
            f.write(b'{"n":1,"ki')
        log.append("decision", {"n": 2})
    res = verify(p)
    assert res.ok, res.describe(p)
    assert [r["kind"] for r in records(p)] == ["decision", "repair", "decision"]


def test_an_unrepaired_torn_tail_is_reported_as_such(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 2)
    with p.open("ab") as f:
        f.write(b'{"half":')
    res = verify(p)
    assert not res.ok and res.line == 3 and "torn last record" in res.reason


# -- 3. two writers ------------------------------------------------------------------------------


def _writer(path: str, tag: str, n: int, max_bytes: int | None, start) -> None:
    log = AuditLog(path, **({"max_bytes": max_bytes} if max_bytes else {}))
    start.wait(60)  # all processes write at the same time, not one after the other

    def burst(t: int) -> None:
        for i in range(n):
            log.append("decision", {"w": tag, "t": t, "i": i})

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()


@pytest.mark.parametrize("max_bytes", [None, 4000])
def test_processes_and_threads_share_one_chain(tmp_path, max_bytes):
    p = tmp_path / "a.jsonl"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_writer, args=(str(p), f"p{k}", 60, max_bytes, start))
             for k in range(3)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    res = verify(p)
    assert res.ok, res.describe(p)
    assert res.records == 3 * 2 * 60
    if max_bytes:
        assert len(res.files) > 3  # rotated while three processes wrote


def test_a_forked_child_takes_its_own_lock(tmp_path):
    p = tmp_path / "a.jsonl"
    log = AuditLog(p)
    log.append("decision", {"who": "parent"})
    ctx = mp.get_context("fork")
    child = ctx.Process(target=lambda: [log.append("decision", {"who": "child", "i": i})
                                        for i in range(50)])
    child.start()
    for i in range(50):
        log.append("decision", {"who": "parent", "i": i})
    child.join(60)
    log.close()
    assert child.exitcode == 0
    res = verify(p)
    assert res.ok and res.records == 101, res.describe(p)


# -- 4. a cut tail -------------------------------------------------------------------------------


def test_deleting_the_last_records_is_detected_through_the_head(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 5)
    head = read_head(p)
    assert head is not None and head.seq == 4 and head.hash == records(p)[-1]["hash"]
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:3]))
    res = verify(p)
    assert not res.ok
    assert any("tail truncated: head says 5 records" in x and "log ends at 3" in x
               for x in res.problems), res.problems


def test_rewriting_the_last_record_is_detected_through_the_head(tmp_path):
    from guard.audit import record_hash

    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    lines = p.read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["decision"]["verdict"] = "allow"
    rec["hash"] = record_hash(rec)
    lines[-1] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    p.write_text("\n".join(lines) + "\n")
    res = verify(p)
    assert not res.ok and any("does not match the head" in x for x in res.problems)


def test_a_cut_tail_found_on_open_is_recorded_in_the_chain(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 5)
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:3]))
    write_log(p, 1)  # the next writer notices and says so in the log itself
    recs = records(p)
    assert recs[3]["kind"] == "reopen" and recs[3]["writer_head"]["seq"] == 4
    res = verify(p)
    assert not res.ok and any("records lost" in x for x in res.problems), res.problems


def test_a_head_slot_torn_by_a_crash_falls_back_to_the_other(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 4)
    hp = tmp_path / "a.jsonl.head"
    raw = bytearray(hp.read_bytes())
    assert len(raw) == 1024
    newer = 0 if json.loads(raw[:512])["seq"] == 3 else 512
    raw[newer + 20: newer + 40] = b"X" * 20  # the slot being written when power went
    hp.write_bytes(bytes(raw))
    assert read_head(p).seq == 2
    res = verify(p)
    assert res.ok and any("after the head" in n for n in res.notes), res.describe(p)
    write_log(p, 1)  # the writer goes on from the log and the valid slot
    assert read_head(p).seq == 4 and verify(p).ok
    hp.write_bytes(b"garbage")
    res = verify(p)
    assert not res.ok and "not a head file" in res.reason


def test_a_deleted_head_is_written_again(tmp_path):
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        log.append("decision", {"n": 0})
        (tmp_path / "a.jsonl.head").unlink()
        log.append("decision", {"n": 1})
    assert read_head(p).seq == 1 and verify(p).ok


def test_a_log_without_head_verifies_with_a_note(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 2)
    (tmp_path / "a.jsonl.head").unlink()
    res = verify(p)
    assert res.ok and any("no head file" in n for n in res.notes)


# -- 5. a deleted or replaced file ---------------------------------------------------------------


def test_a_deleted_log_file_does_not_swallow_records(tmp_path):
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        log.append("decision", {"n": 0})
        log.append("decision", {"n": 1})
        p.unlink()
        rec = log.append("decision", {"n": 2})
    recs = records(p)  # the record landed in a new file at the path, not in the void
    assert [r["kind"] for r in recs] == ["reopen", "decision"]
    assert recs[1]["hash"] == rec["hash"] and "deleted" in recs[0]["reason"]
    res = verify(p)
    assert not res.ok and any("missing" in x for x in res.problems), res.describe(p)


def test_copytruncate_rotation_keeps_one_chain(tmp_path):
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        log.append("decision", {"n": 0})
        log.append("decision", {"n": 1})
        shutil.copy(p, tmp_path / "a.jsonl.1")  # logrotate copytruncate
        with p.open("r+b") as f:
            f.truncate(0)
        log.append("decision", {"n": 2})
    assert [r["kind"] for r in records(p)] == ["reopen", "decision"]
    res = verify(p)
    assert res.ok and res.records == 4, res.describe(p)


def test_a_replaced_log_file_records_the_lost_records(tmp_path):
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        for i in range(4):
            log.append("decision", {"n": i})
        keep = p.read_text().splitlines(keepends=True)[:2]
        tmp = tmp_path / "tmp"
        tmp.write_text("".join(keep))
        os.replace(tmp, p)  # someone put a shorter copy in place
        log.append("decision", {"n": 4})
    recs = records(p)
    assert [r["kind"] for r in recs] == ["decision", "decision", "reopen", "decision"]
    assert recs[2]["writer_head"]["seq"] == 3 and recs[2]["found"]["seq"] == 1
    res = verify(p)
    assert not res.ok and any("records lost" in x for x in res.problems)


# -- 6. rotation ---------------------------------------------------------------------------------


def test_rotation_carries_the_chain_into_the_next_file(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 40, max_bytes=1500)
    files = [*sorted(tmp_path.glob("a.jsonl.*[0-9]"), key=lambda f: int(f.suffix[1:])), p]
    assert len(files) > 3
    for older, newer in itertools.pairwise(files):
        assert older.stat().st_size <= 1500
        assert records(newer)[0]["prev"] == records(older)[-1]["hash"]
    res = verify(p)
    assert res.ok and res.records == 40 and len(res.files) == len(files), res.describe(p)
    assert f"{len(files)} files" in res.describe(p)


def test_rotation_settings_come_from_the_audit_config(tmp_path):
    from guard.config import GuardConfig

    p = tmp_path / "a.jsonl"
    cfg = GuardConfig().with_overrides(**{"audit.path": str(p), "audit.max_bytes": 1500,
                                          "audit.keep": 1}).audit
    with AuditLog.from_config(cfg) as log:
        for i in range(30):
            log.append("decision", {"n": i})
    assert len(list(tmp_path.glob("a.jsonl.*[0-9]"))) == 1
    assert verify(p).ok


def test_rotation_keep_prunes_and_verify_knows_what_was_kept(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 40, max_bytes=1500, keep=2)
    rotated = sorted(tmp_path.glob("a.jsonl.*[0-9]"), key=lambda f: int(f.suffix[1:]))
    assert len(rotated) == 2
    res = verify(p)
    assert res.ok, res.describe(p)
    assert any("older rotated files were pruned" in n for n in res.notes), res.notes
    rotated[0].unlink()  # deleting the oldest kept file is not pruning: it is detected
    res = verify(p)
    assert not res.ok and any("missing" in x for x in res.problems), res.describe(p)


def test_a_missing_middle_file_breaks_the_chain(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 40, max_bytes=1500)
    (tmp_path / "a.jsonl.2").unlink()
    res = verify(p)
    assert not res.ok and "chain broken" in res.reason


def test_fsync_mode_keeps_the_same_guarantees(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 10, fsync=True, max_bytes=1500)
    with p.open("ab") as f:
        f.write(b'{"torn":')
    write_log(p, 10, fsync=True, max_bytes=1500)
    res = verify(p)
    assert res.ok and res.records == 21, res.describe(p)
    assert any("torn tail repaired" in n for n in res.notes)


def test_appending_to_a_closed_log_is_an_audit_error(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append("decision", {"n": 0})


# -- 7. oversized fields and 9. linear reopen ----------------------------------------------------


def test_an_oversized_field_is_stored_as_digest_and_prefix(tmp_path):
    p = tmp_path / "a.jsonl"
    big = "x" * 2_000_000
    with AuditLog(p) as log:
        rec = log.append("decision", {"proposal": {"description": big, "args": [big, "ok"]}})
    field = rec["proposal"]["description"]
    assert field == {"sha256": hashlib.sha256(big.encode()).hexdigest(),
                     "prefix": big[:1024], "chars": len(big)}
    assert rec["proposal"]["args"][1] == "ok"
    assert p.stat().st_size < 8000
    assert verify(p).ok


def test_reopening_after_a_huge_legacy_record_is_linear(tmp_path):
    """The measured defect: a 20 MB record written by the old version took 3 s to reopen."""
    from guard.audit import GENESIS, _canonical, record_hash

    p = tmp_path / "a.jsonl"
    rec = {"seq": 0, "ts": 0.0, "kind": "decision", "prev": GENESIS, "blob": "y" * 20_000_000}
    rec["hash"] = record_hash(rec)
    p.write_bytes(_canonical(rec) + b"\n")
    t0 = time.perf_counter()
    with AuditLog(p) as log:
        opened = time.perf_counter() - t0
        log.append("decision", {"n": 1})
    assert opened < 1.0, f"reopen took {opened:.2f} s"
    assert verify(p).ok


def test_verify_skips_a_line_over_its_memory_bound(tmp_path, monkeypatch):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    monkeypatch.setattr(audit_mod, "MAX_LINE_BYTES", 100)
    res = verify(p)
    assert not res.ok and "longer than 100 bytes" in res.reason and res.line == 1


# -- 8. payloads that are not JSON ---------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque robot part>"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def nested(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def test_no_payload_makes_append_raise(tmp_path):
    p = tmp_path / "a.jsonl"
    cyclic: dict = {"name": "loop"}
    cyclic["self"] = cyclic
    shared: list = ["leaf"]
    for _ in range(40):
        shared = [shared, shared]  # 2**40 paths through 40 lists
    payloads = [
        {"action": "pass the knife \ud800 now", "\udc80key": "v"},
        {"bytes": b"\x00\xffraw", "ba": bytearray(b"ab")},
        {"array": np.arange(12, dtype=np.float32).reshape(3, 4), "scalar": np.float64(0.5),
         "i": np.int64(7), "big_array": np.zeros((300, 300), dtype=np.uint8)},
        {"object": object(), "opaque": Opaque(), "broken": BrokenRepr(), "set": {1, 2}},
        {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "np_nan": np.float32("nan")},
        {"deep_list": nested(10_000)},
        {"deep_dict": json.loads("{\"a\":" * 900 + "1" + "}" * 900)},
        {"cyclic": cyclic, "shared": shared},
        {1: "int key", None: "none key", (1, 2): "tuple key", "big": 10 ** 5000},
        {"path": Path("/tmp/x"), "tuple": (1, "a")},
    ]
    with AuditLog(p) as log:
        for payload in payloads:
            log.append("decision", payload)
        log.append("kind \ud800", {"ok": True})
    res = verify(p)
    assert res.ok and res.records == len(payloads) + 1, res.describe(p)
    for raw in p.read_text(encoding="utf-8").splitlines():
        strict_json(raw)  # valid JSON: no NaN, no Infinity
    recs = records(p)
    assert recs[0]["action"] == "pass the knife \\ud800 now"
    assert recs[2]["array"] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0],
                                [8.0, 9.0, 10.0, 11.0]]
    assert recs[2]["big_array"]["shape"] == [300, 300]
    assert recs[4]["nan"] == "NaN" and recs[4]["ninf"] == "-Infinity"
    assert recs[3]["opaque"] == "<Opaque robot part>"
    assert p.stat().st_size < 2_000_000


def test_a_lone_surrogate_in_a_check_is_audited(config, audit_path):
    """Text UTF-8 cannot encode was a veto with zero audit records."""
    from guard.backends.scripted import ScriptedBackend
    from guard.core import Guard
    from guard.types import ActionProposal

    with Guard(config, backend=ScriptedBackend.answering("VETO\nrisk: 0.9")) as g:
        d = g.check(None, ActionProposal(name="stove_on", description="turn on \ud800 the stove"))
    (rec,) = records(audit_path)
    assert rec["decision"]["id"] == d.id
    assert "\\ud800" in rec["proposal"]["description"]
    assert verify(audit_path).ok


# -- the command line ----------------------------------------------------------------------------


def guard_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guard.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_cli_verify_reports_each_problem_on_one_line(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 20, max_bytes=1500)
    r = guard_cli("audit", "verify", p)
    assert r.returncode == 0 and "20 records" in r.stdout and "files" in r.stdout, r.stdout
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:-2]))  # the last two records deleted
    r = guard_cli("audit", "verify", p)
    assert r.returncode == 1 and "tail truncated" in r.stdout, r.stdout
    problem_lines = [x for x in r.stdout.splitlines() if "tail truncated" in x]
    assert len(problem_lines) == 1


# -- red team: damaged files as crashes, editors and other tools leave them ----------------------
# Each of these failed before the fix it names (issue: torn logs and other damage).


def canonical(rec: dict) -> bytes:
    """A record's line as the writer writes it."""
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_nul_bytes_a_crash_left_are_named_and_the_chain_goes_on_after_them(tmp_path):
    # ext4/xfs delayed allocation: after a power cut the file has its new size but the blocks
    # of the last records read as NULs. Here record 2's bytes are NULs and record 3 survived.
    p = tmp_path / "a.jsonl"
    write_log(p, 4)
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:2]) + b"\0" * len(lines[2]) + lines[3])
    res = verify(p)
    assert not res.ok and res.line == 3 and "NUL bytes before a record" in res.reason
    assert len(res.problems) == 1, res.problems  # record 3 after the NULs is read and counted
    write_log(p, 1)  # the writer continues from record 3, not from record 1 (a forked chain)
    recs = [json.loads(x.lstrip(b"\0")) for x in p.read_bytes().splitlines()]
    assert [r["seq"] for r in recs] == [0, 1, 3, 4] and recs[3]["prev"] == recs[2]["hash"]
    assert len(verify(p).problems) == 1
    # NULs at the end (the usual shape) are a torn tail: named, and moved to evidence on open
    with p.open("ab") as f:
        f.write(b"\0" * 4096)
    res = verify(p)
    assert not res.ok and "torn last record (4096 NUL bytes" in res.problems[-1]


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    p.write_bytes(p.read_bytes()[:-1])  # a crash between the last byte and the newline
    res = verify(p)
    assert res.ok and res.records == 3, res.describe(p)  # was: torn record, tail truncated
    assert any("lacks its newline" in n for n in res.notes)
    write_log(p, 1)  # was: the whole record cut into evidence and reported as lost
    recs = records(p)
    assert [r["kind"] for r in recs] == ["decision"] * 3 + ["repair", "decision"]
    assert recs[3]["newline"]["seq"] == 2 and not list(tmp_path.glob("*.torn-*"))
    res = verify(p)
    assert res.ok and res.records == 5, res.describe(p)
    assert any("lacked its newline" in n for n in res.notes)


def test_a_missing_log_file_is_checked_against_its_head_and_rotated_files(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    p.unlink()  # the log is gone, its head stays: was "audit file not found" (exit 2)
    res = verify(p)
    assert not res.ok and "the log file is missing" in res.reason
    assert any("tail truncated: head says 3 records" in x for x in res.problems)
    q = tmp_path / "b" / "a.jsonl"
    write_log(q, 20, max_bytes=1500)
    rotated = audit_mod.rotated_files(q)
    q.rename(q.with_name(f"a.jsonl.{len(rotated) + 1}"))  # a crash between rename and create
    res = verify(q)
    assert res.ok and res.records == 20, res.describe(q)
    assert any("a rotation stopped" in n for n in res.notes)
    with pytest.raises(audit_mod.UsageError, match="not found"):
        verify(tmp_path / "none" / "a.jsonl")


def test_a_writer_that_finds_no_usable_head_says_so_in_the_chain(tmp_path):
    # Was: the head written anew and verify OK with no trace, so cutting the tail together
    # with the head and restarting the writer left nothing to see.
    for damage in ("delete", "empty", "garbage"):
        p = tmp_path / damage / "a.jsonl"
        write_log(p, 3)
        hp = p.with_name("a.jsonl.head")
        if damage == "delete":
            hp.unlink()
        else:
            hp.write_bytes(b"" if damage == "empty" else b"garbage")
        res = verify(p)
        assert res.ok == (damage != "garbage"), res.describe(p)
        assert damage != "empty" or any("is empty" in n for n in res.notes), res.notes
        write_log(p, 1)
        recs = records(p)
        assert recs[3]["kind"] == "reopen" and recs[3]["writer_head"]["seq"] == 2
        res = verify(p)
        assert res.ok and any("the chain goes on from a.jsonl (seq 2)" in n for n in res.notes)
    # with the head and the log gone, the chain goes on from the newest rotated file
    p = tmp_path / "rot" / "a.jsonl"
    write_log(p, 20, max_bytes=1500)
    p.unlink()
    p.with_name("a.jsonl.head").unlink()
    write_log(p, 1)  # was: a new chain from genesis, so verify reported a broken chain
    res = verify(p)
    assert res.ok, res.describe(p)
    assert any("the chain goes on from a.jsonl." in n for n in res.notes)


def test_re_encoded_lines_and_duplicate_keys_are_reported(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 4)
    clean = p.read_bytes()
    p.write_bytes(clean.replace(b"\n", b"\r\n"))  # a log saved by a Windows editor
    res = verify(p)  # was: OK (json.loads takes the \r as whitespace)
    assert not res.ok and res.line == 1 and len(res.problems) == 1, res.problems
    assert "CRLF line endings (and 3 more lines" in res.reason
    p.write_bytes(b"\xef\xbb\xbf" + clean)
    res = verify(p)
    assert not res.ok and "byte order mark" in res.reason
    lines = clean.splitlines(keepends=True)
    # a second "verdict": this reader takes the last, others the first
    lines[1] = lines[1].replace(b'"decision":{', b'"decision":{"verdict":"allow",', 1)
    p.write_bytes(b"".join(lines))
    res = verify(p)
    assert not res.ok and res.line == 2 and "duplicate key(s) verdict" in res.reason


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda r, raw: raw.replace(b'"veto"', b'"v\xff\xfeo"'), "not UTF-8: byte 0xff"),
    (lambda r, raw: b"[1,2]", "not an audit record: a JSON array"),
    (lambda r, raw: b"null", "not an audit record: a JSON null"),
    (lambda r, raw: canonical({**r, "hash": 5}), "its hash is a JSON number, not a string"),
    (lambda r, raw: raw.replace(b'"seq":1', b'"seq":' + b"9" * 5000),
     "Exceeds the limit (4300 digits)"),
    (lambda r, raw: b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
])
def test_each_problem_line_names_what_is_wrong(tmp_path, damage, reason):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    lines = p.read_bytes().splitlines()
    lines[1] = damage(json.loads(lines[1]), lines[1])
    p.write_bytes(b"\n".join(lines) + b"\n")
    res = verify(p)
    assert not res.ok and res.line == 2 and reason in res.reason, res.reason


@pytest.mark.parametrize("seq", ["1", 1.0, True])
def test_a_seq_that_is_not_an_integer_is_reported(tmp_path, seq):
    from guard.audit import record_hash

    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    lines = p.read_bytes().splitlines()
    rec = json.loads(lines[1])
    rec["seq"] = seq
    rec["hash"] = record_hash(rec)
    lines[1] = canonical(rec)
    p.write_bytes(b"\n".join(lines) + b"\n")
    res = verify(p)  # was: 1.0 and true passed as seq 1 ("1" was reported as "seq 1 != 1")
    assert not res.ok and res.line == 2 and "is not an integer" in res.reason, res.reason


def test_forged_fields_cannot_add_lines_to_the_report_or_crash_it(tmp_path):
    from guard.audit import record_hash

    p = tmp_path / "a.jsonl"
    write_log(p, 2)
    forged = [
        {"kind": "reopen", "reason": "ok\nproblem: none, all fine", "writer_head": None},
        {"kind": "repair", "torn": {"evidence": "../x/y", "bytes": 1}},  # was: a ValueError
    ]
    prev, seq, lines = records(p)[-1]["hash"], 2, []
    for body in forged:
        rec = {**body, "seq": seq, "ts": 0.0, "prev": prev}
        rec["hash"] = record_hash(rec)
        lines.append(canonical(rec) + b"\n")
        prev, seq = rec["hash"], seq + 1
    with p.open("ab") as f:
        f.writelines(lines)
    text = verify(p).describe(p)
    assert not any(x.startswith("problem: none") for x in text.splitlines()), text
    assert "ok\\x0aproblem: none" in text and "is not a file name" in text


def test_a_log_path_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # was: opened; appends blocked once the pipe buffer filled (a hang)
    with pytest.raises(audit_mod.UsageError, match="it is a FIFO, not a regular file"):
        AuditLog(fifo)
    null = tmp_path / "null.jsonl"
    null.symlink_to(os.devnull)  # was: every record "written" into /dev/null
    with pytest.raises(audit_mod.UsageError, match="character device"):
        AuditLog(null)
    with pytest.raises(audit_mod.UsageError, match="it is a FIFO, not an audit log file"):
        verify(fifo)
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        log.append("decision", {"n": 0})
        p.unlink()
        os.mkfifo(p)  # replaced under the writer: the next append fails closed
        with pytest.raises(AuditError, match="FIFO"):
            log.append("decision", {"n": 1})


def test_rotation_skips_a_name_already_taken(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 6, max_bytes=1500)
    taken = p.with_name(f"a.jsonl.{len(audit_mod.rotated_files(p)) + 1}")
    taken.mkdir()  # not a rotated file, but its name: the rename onto it failed every time
    (taken / "x").write_text("x")
    write_log(p, 20, max_bytes=1500)
    res = verify(p)
    assert res.ok and res.records == 26, res.describe(p)


def test_verify_reads_a_consistent_log_while_a_writer_rotates_and_prunes(tmp_path, monkeypatch):
    p = tmp_path / "a.jsonl"
    write_log(p, 12, max_bytes=700, keep=2)
    writer = AuditLog(p, max_bytes=700, keep=2)
    real = audit_mod.rotated_files
    moved = threading.Event()
    threads = []

    def rotate_meanwhile(path):
        found = real(path)
        if not moved.is_set():  # once: verify has listed the files, a writer rotates now
            moved.set()
            t = threading.Thread(target=lambda: [writer.append("decision", {"i": i})
                                                 for i in range(8)])
            threads.append(t)
            t.start()
            t.join(1.0)  # before the fix this finished: files pruned and renamed under verify
        return found

    monkeypatch.setattr(audit_mod, "rotated_files", rotate_meanwhile)
    res = verify(p)
    monkeypatch.setattr(audit_mod, "rotated_files", real)
    threads[0].join(30)  # the writer waited for verify's snapshot, then wrote its 8 records
    writer.close()
    assert res.ok, res.describe(p)  # was: FileNotFoundError, or records reported missing
    assert verify(p).ok


def test_cli_verify_exit_codes_on_a_missing_log_and_a_fifo(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    p.unlink()
    r = guard_cli("audit", "verify", p)  # was: exit 2 "audit file not found", head ignored
    assert r.returncode == 1 and "problem: " in r.stdout and "the log file is missing" in r.stdout
    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    r = guard_cli("audit", "verify", fifo)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "it is a FIFO, not an audit log file" in r.stderr and "Traceback" not in r.stderr


def test_a_head_file_with_bytes_after_its_slots_is_started_anew(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    with (tmp_path / "a.jsonl.head").open("ab") as f:
        f.write(b"junk")  # a tool appended to it; the slots themselves are fine
    res = verify(p)
    assert not res.ok and "longer than the 1024 bytes of its two slots" in res.reason
    write_log(p, 1)  # was: the slots rewritten in place, the file still too long, forever
    res = verify(p)
    assert res.ok and read_head(p).seq == 4, res.describe(p)
    assert any("longer than the 1024 bytes" in n for n in res.notes)


def test_writers_follow_a_lock_file_deleted_under_them(tmp_path):
    import fcntl

    p = tmp_path / "a.jsonl"
    first = AuditLog(p)
    first.append("decision", {"w": "first"})
    lock = tmp_path / "a.jsonl.lock"
    lock.unlink()  # a cleanup of stale files; the next writer creates a new one
    second = AuditLog(p)
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the second writer is mid-append
    t = threading.Thread(target=first.append, args=("decision", {"w": "first"}))
    t.start()
    t.join(0.5)
    waited = t.is_alive()  # was: the first writer held the deleted lock and went ahead
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    t.join(30)
    assert waited and not t.is_alive()
    threads = [threading.Thread(target=lambda log=log: [log.append("decision", {"i": i})
                                                        for i in range(100)])
               for log in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    first.close()
    second.close()
    res = verify(p)
    assert res.ok and res.records == 202, res.describe(p)


def test_a_writer_opening_while_another_rotates_takes_the_new_file(tmp_path, monkeypatch):
    import fcntl

    p = tmp_path / "a.jsonl"
    other = AuditLog(p, max_bytes=1)  # rotates before every record
    other.append("decision", {"w": "other"})
    armed = [True]
    main = threading.current_thread()

    class Flock:  # fcntl as guard.audit sees it: the new writer's first lock lets the other
        def __getattr__(self, name: str):  # writer rotate first, as a busy one would
            return getattr(fcntl, name)

        def flock(self, fd: int, op: int) -> None:
            if op == fcntl.LOCK_EX and armed[0] and threading.current_thread() is main:
                armed[0] = False
                t = threading.Thread(target=other.append, args=("decision", {"w": "other"}))
                t.start()
                t.join(30)
            fcntl.flock(fd, op)

    monkeypatch.setattr(audit_mod, "fcntl", Flock())
    with AuditLog(p, max_bytes=1) as late:  # was: it had opened the file before the lock,
        late.append("decision", {"w": "late"})  # adopted it rotated away, forked the chain
    monkeypatch.undo()
    other.close()
    res = verify(p)
    assert res.ok and res.records == 3, res.describe(p)
    assert [r["kind"] for f in audit_mod.rotated_files(p) for r in records(f)] == ["decision"] * 2


def test_a_rewritten_record_before_the_tail_is_recorded_before_the_head_is_rewritten(tmp_path):
    from guard.audit import record_hash

    p = tmp_path / "a.jsonl"
    write_log(p, 4)
    lines = p.read_bytes().splitlines()
    last = json.loads(lines[3])  # the record the head names, rewritten with its hash ...
    last["decision"]["verdict"] = "allow"
    last["hash"] = record_hash(last)
    lines[3] = canonical(last)
    extra = {**last, "seq": 4, "prev": last["hash"]}  # ... and one more after it
    extra["hash"] = record_hash(extra)
    p.write_bytes(b"\n".join([*lines, canonical(extra)]) + b"\n")
    assert any("does not match the head" in x for x in verify(p).problems)
    write_log(p, 1)  # was: the writer took the log as it found it and wrote a new head
    res = verify(p)
    assert not res.ok and "record seq 3 is not the one the chain had" in res.reason, res.reason


def test_non_regular_head_lock_or_evidence_files_never_hang_the_writer_or_verify(tmp_path):
    from guard.audit import record_hash

    p = tmp_path / "a.jsonl"
    write_log(p, 2)
    # a repair record naming a FIFO as its evidence: opening it to read waited forever
    last = records(p)[-1]
    rec = {"kind": "repair", "torn": {"evidence": "ev"}, "seq": 2, "ts": 0.0,
           "prev": last["hash"]}
    rec["hash"] = record_hash(rec)
    with p.open("ab") as f:
        f.write(canonical(rec) + b"\n")
    os.mkfifo(tmp_path / "ev")
    for name in ("a.jsonl.head", "a.jsonl.lock"):
        (tmp_path / name).unlink()
        os.mkfifo(tmp_path / name)
    out: list = []
    t = threading.Thread(target=lambda: out.append(verify(p)), daemon=True)
    t.start()
    t.join(30)
    assert out, "verify hung"
    assert not out[0].ok and "a.jsonl.head: unreadable (it is a FIFO" in out[0].reason
    assert any("evidence file ev unreadable (it is a FIFO" in n for n in out[0].notes)
    t = threading.Thread(target=lambda: out.append(write_log(p, 1)), daemon=True)
    t.start()
    t.join(30)
    assert len(out) == 2, "the writer hung"  # it audits; the head it cannot write is reported


def test_a_repeated_evidence_name_is_never_overwritten(tmp_path, monkeypatch):
    p = tmp_path / "a.jsonl"
    write_log(p, 1)
    monkeypatch.setattr(audit_mod.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    for torn in (b'{"first', b'{"second'):  # a clock stepped back: the same name twice
        with p.open("ab") as f:
            f.write(torn)
        write_log(p, 1)  # was: the second open failed (evidence name taken), a veto
    monkeypatch.undo()
    kept = sorted(x.read_bytes() for x in tmp_path.glob("a.jsonl.torn-*"))
    assert kept == [b'{"first', b'{"second'] and verify(p).ok


def test_a_file_name_with_a_line_break_stays_on_its_line(tmp_path):
    p = tmp_path / "a\nproblem: none.jsonl"
    write_log(p, 2)
    text = verify(p).describe(p)
    assert len(text.splitlines()) == 1 and "a\\x0aproblem: none.jsonl: OK" in text, text


def test_blank_lines_between_records_are_reported_as_a_rewrite(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(lines[0] + b"\n  \n" + b"".join(lines[1:]))  # was: skipped, verify OK
    res = verify(p)
    assert not res.ok and res.line == 2 and "blank lines (and 1 more line" in res.reason
    assert res.total == 3
