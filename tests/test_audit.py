import json

import pytest

from guard.audit import AuditLog, verify
from guard.errors import UsageError


def write_log(path, n=5):
    with AuditLog(path) as log:
        for i in range(n):
            log.append("decision", {"decision": {"id": f"d{i}", "verdict": "veto"}})


def lines(path):
    return path.read_text().splitlines()


def test_intact_chain_verifies(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p)
    r = verify(p)
    assert r.ok and r.records == 5
    assert "chain intact" in r.describe(p)


def test_an_edited_record_is_caught_at_its_line(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p)
    ls = lines(p)
    rec = json.loads(ls[2])
    rec["decision"]["verdict"] = "allow"
    ls[2] = json.dumps(rec)
    p.write_text("\n".join(ls) + "\n")
    r = verify(p)
    assert not r.ok and r.line == 3 and "edited" in r.reason and r.records == 2


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(tmp_path):
    from guard.audit import record_hash

    p = tmp_path / "a.jsonl"
    write_log(p)
    ls = lines(p)
    rec = json.loads(ls[1])
    rec["decision"]["verdict"] = "allow"
    rec["hash"] = record_hash(rec)
    # written as the writer writes (canonical JSON), the edit shows only at the next link
    ls[1] = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    p.write_text("\n".join(ls) + "\n")
    r = verify(p)
    assert not r.ok and r.line == 3 and "chain broken" in r.reason
    # written any other way, the edited line itself is reported as rewritten
    ls[1] = json.dumps(rec)
    p.write_text("\n".join(ls) + "\n")
    r = verify(p)
    assert not r.ok and r.line == 2 and "re-encoded" in r.reason


@pytest.mark.parametrize("op", ["delete", "swap", "truncate"])
def test_deleted_reordered_and_truncated_records_are_caught(tmp_path, op):
    p = tmp_path / "a.jsonl"
    write_log(p)
    ls = lines(p)
    if op == "delete":
        del ls[1]
    elif op == "swap":
        ls[1], ls[2] = ls[2], ls[1]
    else:
        ls[4] = ls[4][: len(ls[4]) // 2]
    p.write_text("\n".join(ls) + "\n")
    r = verify(p)
    assert not r.ok and r.line == (5 if op == "truncate" else 2)


def test_reopening_continues_the_chain(tmp_path):
    p = tmp_path / "a.jsonl"
    write_log(p, 3)
    write_log(p, 2)
    r = verify(p)
    assert r.ok and r.records == 5
    assert [json.loads(x)["seq"] for x in lines(p)] == [0, 1, 2, 3, 4]


def test_missing_file_and_unwritable_path_are_usage_errors(tmp_path):
    with pytest.raises(UsageError):
        verify(tmp_path / "none.jsonl")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot open"):
        AuditLog(blocker / "sub" / "a.jsonl")
