"""`guard faults`: the fault matrix passes on the scripted backend and the embedded model, and
it does catch a guard that fails open (it is a check that can fail)."""

import json
import subprocess
import sys

import pytest

import guard.core as core
from guard.config import GuardConfig
from guard.faults import CLASSES, default_scenes, run_matrix
from guard.freshness import Freshness


@pytest.fixture(scope="module")
def scenes():
    return default_scenes(12)


def test_scripted_backend_passes_every_class(tmp_path, scenes):
    config = GuardConfig().with_overrides(**{"model.backend": "scripted"})
    report = run_matrix(config, tmp_path, scenes=scenes)
    rows = {r["fault"]: r for r in report.rows()}
    assert set(rows) == set(CLASSES)
    assert not report.failed, report.table()
    assert all(r["cases"] > 0 for r in rows.values())
    saved = json.loads((tmp_path / "faults.json").read_text())
    assert saved["failed"] is False and len(saved["cases"]) == len(report.outcomes)


def test_a_guard_that_trusts_every_stamp_is_caught(tmp_path, scenes, monkeypatch):
    """The old freshness test (`age > max_age`) let future and NaN stamps through: the matrix
    must report those as silent allows."""

    def trusting(stamp, now, *, max_age_ms, max_skew_ms, has_frame=True):
        if not has_frame:
            from guard.types import Status

            return Freshness(Status.NO_FRAME, "no frame")
        age_ms = (now - stamp) * 1000.0 if stamp is not None else 0.0
        if max_age_ms is not None and age_ms > max_age_ms:
            from guard.types import Status

            return Freshness(Status.STALE_FRAME, "old")
        return Freshness(None)

    monkeypatch.setattr(core, "frame_freshness", trusting)
    config = GuardConfig().with_overrides(**{"model.backend": "scripted"})
    report = run_matrix(config, tmp_path, classes=("clock",), scenes=scenes)
    (row,) = report.rows()
    assert report.failed and row["silent_allows"] >= 4, report.table()


def test_on_failure_allow_is_counted_as_the_policy_not_as_silent(tmp_path, scenes):
    config = GuardConfig().with_overrides(**{
        "model.backend": "scripted", "policy.on_failure": "allow"})
    report = run_matrix(config, tmp_path, classes=("non_finite",), scenes=scenes)
    (row,) = report.rows()
    assert row["silent_allows"] == 0 and row["allowed_by_policy"] == row["cases"]


@pytest.mark.slow
def test_cli_on_the_embedded_model(tmp_path):
    """What CI runs: the default config with the embedded model, every class."""
    r = subprocess.run(
        [sys.executable, "-m", "guard.cli.main", "faults", "--out", str(tmp_path),
         "--scenes", "16"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "| injection |" in r.stdout
    saved = json.loads((tmp_path / "faults.json").read_text())
    assert saved["model"].endswith("hazardworld-small")
    inj = next(row for row in saved["rows"] if row["fault"] == "injection")
    assert inj["cases"] > 1  # the embedded model vetoes some base scenes: flips are measured


AUDIT_DAMAGES = (
    "power loss: NUL bytes after the last record",
    "power loss: NUL bytes before a surviving record",
    "log path is a FIFO",
    "log path is /dev/null (a link to it)",
    "head file empty", "head file garbage", "head file missing",
    "lock file deleted while writing",
    "a writer starts while another rotates",
)


def test_the_audit_class_covers_the_damages_the_log_handles(tmp_path, scenes):
    """Each damage tests/test_audit_log.py produces by hand is a case of `guard faults`, and
    the log survives each: no silent allow, crash, hang or lost record."""
    config = GuardConfig().with_overrides(**{"model.backend": "scripted"})
    report = run_matrix(config, tmp_path, classes=("audit",), scenes=scenes)
    cases = {o.case: o for o in report.outcomes}
    assert set(AUDIT_DAMAGES) <= set(cases), sorted(cases)
    assert not report.failed, report.table()
    for case in ("log path is a FIFO", "log path is /dev/null (a link to it)"):
        assert cases[case].status == "refused" and "not a regular file" in cases[case].error


def test_a_log_that_accepts_a_device_is_caught(tmp_path, scenes, monkeypatch):
    """A log that took /dev/null as its file would 'write' every record into nothing: the
    matrix must count that as a lost record."""
    import stat

    import guard.audit as audit

    real = audit._require_regular
    monkeypatch.setattr(audit, "_require_regular",
                        lambda mode: None if stat.S_ISCHR(mode) else real(mode))
    config = GuardConfig().with_overrides(**{"model.backend": "scripted"})
    report = run_matrix(config, tmp_path, classes=("audit",), scenes=scenes)
    cases = {o.case: o for o in report.outcomes}
    assert report.failed and cases["log path is /dev/null (a link to it)"].lost_records == 1
