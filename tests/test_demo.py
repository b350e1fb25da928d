"""`guard demo` through real subprocesses: a small episode, judged, printed, reported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "guard" / "models" / "hazardworld-small"


def guard(*args, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "guard.cli.main", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


def rows(stdout):
    return [ln for ln in stdout.splitlines() if ln[:3].strip().isdigit()]


def test_demo_judges_an_episode_and_says_where_the_report_is(tmp_path):
    out = tmp_path / "demo"
    r = guard("demo", "--out", out, "--steps", 4, "--backend", "scripted", "--model", "stub")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "model: stub (given with --model)"
    table = rows(r.stdout)
    assert len(table) == 4
    assert all(" allow " in ln and " ok " in ln for ln in table)  # the scripted default
    assert any(" unsafe " in ln for ln in table) and any(" safe " in ln for ln in table)
    assert f"report: {out / 'report.html'}" in lines
    assert f"summary: {out / 'summary.json'}" in lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_proposals"] == 4
    assert (out / "report.html").stat().st_size > 0
    assert (out / "episode" / "episode.jsonl").is_file()


@pytest.mark.skipif(not (EMBEDDED / "config.json").is_file(), reason="no embedded model")
def test_demo_uses_the_embedded_model_by_default(tmp_path):
    r = guard("demo", "--out", tmp_path / "demo", "--steps", 6)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("model: hazardworld-small (embedded default")
    table = rows(r.stdout)
    assert len(table) == 6
    # The trained model answers in the guard's format: no fail-closed parse errors.
    assert all(" ok " in ln for ln in table), r.stdout


def test_demo_with_a_model_that_does_not_load_fails_in_one_line(tmp_path):
    r = guard("demo", "--out", tmp_path / "demo", "--steps", 2,
              "--model", tmp_path / "no-such-model")
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "model did not load" in err[0], r.stderr


def test_demo_usage_errors_exit_2(tmp_path):
    r = guard("demo", "--out", tmp_path / "demo", "--steps", 0)
    assert r.returncode == 2 and "--steps" in r.stderr


@pytest.mark.skipif(not (EMBEDDED / "config.json").is_file(), reason="no embedded model")
def test_check_reads_a_trained_model_with_its_training_template(tmp_path):
    """Without --template, `guard check` prompts a model folder as it was trained (its
    training_run_config.yaml), so the embedded model answers in format instead of failing
    closed on every check; an explicit template still wins."""
    gen = guard("world", "generate", "--split", "test_iid", "--n", 2, "--out", tmp_path / "w")
    assert gen.returncode == 0, gen.stderr
    item = json.loads((tmp_path / "w" / "items.jsonl").read_text().splitlines()[0])
    args = ("check", "--model", EMBEDDED, "--image", tmp_path / "w" / item["image"],
            "--action", item["query"], "--audit", tmp_path / "audit.jsonl")
    r = guard(*args)
    decision = json.loads(r.stdout)
    assert decision["status"] == "ok", decision
    assert decision["verdict"] in ("allow", "veto", "annotate")
    forced = json.loads(guard(*args, "--template", "consequence_v1").stdout)
    assert forced["status"] == "error" and "verdict" in forced["error"]
