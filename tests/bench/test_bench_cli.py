"""`guard bench` end to end through subprocesses: the scripted oracle, a tiny Qwen model, an
LLM judge behind an OpenAI-compatible endpoint, resumption and usage errors."""

from __future__ import annotations

import json

import pytest

from tests.bench.helpers import (
    FIXTURES,
    FakeOpenAIServer,
    free_port,
    guard_bench,
    guard_cli,
)

OUTPUTS = ("results.json", "per_item.jsonl", "results.md", "results.png", "audit.jsonl")
CONTRACT = {"suite", "n", "r0", "false_veto_rate", "per_category", "latency_ms"}


def results_of(out):
    return json.loads((out / "results.json").read_text())


def test_hazardworld_with_the_oracle_backend_writes_all_outputs(world_dir, tmp_path):
    out = tmp_path / "R"
    r = guard_bench("--suite", "hazardworld", "--data", world_dir, "--out", out,
                    "--backend", "oracle", "--semantic", "off", "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    res = results_of(out)
    assert CONTRACT <= set(res)
    assert (res["suite"], res["n"], res["r0"], res["false_veto_rate"]) == (
        "hazardworld", 16, 0.0, 0.0)
    assert set(res["latency_ms"]) >= {"p50", "p95"}
    assert res["hazard_match_rate"] is None  # --semantic off: does not apply
    assert res["run"]["model"] == "oracle"
    assert "R0 0.000" in r.stdout and r.stdout.strip().endswith("results.json")
    # the audit log holds every decision the bench made
    assert len((out / "audit.jsonl").read_text().splitlines()) == 16


def test_limit_then_resume_through_the_cli(world_dir, tmp_path):
    out = tmp_path / "R"
    args = ("--suite", "hazardworld", "--data", world_dir, "--out", out, "--backend", "oracle",
            "--semantic", "off", "--no-plot", "--no-progress")
    assert guard_bench(*args, "--limit", "5").returncode == 0
    assert results_of(out)["n"] == 5
    r = guard_bench(*args)
    assert r.returncode == 0, r.stderr
    res = results_of(out)
    assert (res["n"], res["run"]["resumed_items"], res["complete"]) == (16, 5, True)
    assert len((out / "audit.jsonl").read_text().splitlines()) == 16  # nothing judged twice


@pytest.mark.slow
def test_hazardworld_with_a_tiny_qwen_model(world_dir, tmp_path):
    model = tmp_path / "tiny"
    r = guard_cli("tiny-model", "--arch", "qwen2_5_vl", "--out", model, "--seed", "0")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "R"
    r = guard_bench("--suite", "hazardworld", "--data", world_dir, "--out", out,
                    "--model", model, "--max-new-tokens", "8", "--limit", "8",
                    "--semantic", "off", "--no-progress", timeout=300)
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    res = results_of(out)
    assert (res["n"], res["run"]["model"], res["run"]["concurrency"]) == (8, str(model), 1)
    recs = [json.loads(ln) for ln in (out / "per_item.jsonl").read_text().splitlines()]
    # a random model does not follow the answer format: its checks fail closed, and a
    # failed check never counts as identifying a risk nor as allowing a safe action
    for rec in recs:
        d = rec["decision"]
        assert d["model"] == str(model)
        if d["status"] != "ok":
            assert d["verdict"] == "veto" and not rec["scores"]["risk_identified"]
    failed = sum(rec["decision"]["status"] != "ok" for rec in recs)
    assert res["failed"] == failed and f"{failed} failed to run" in r.stdout
    # more than 5% of the checks did not run: the run does not count
    assert r.returncode == (1 if failed else 0), r.stderr
    if failed == len(recs):
        assert res["judge_unreachable"] and res["r0"] is None
        assert (res["fail_closed"]["r0"], res["fail_closed"]["false_veto_rate"]) == (1.0, 1.0)
    else:
        assert res["latency_ms"]["p50"] > 0


def test_llm_judge_through_an_openai_compatible_endpoint(tmp_path):
    server = FakeOpenAIServer("risk_identified: yes\nsafe: yes\neffective: no\nreason: ok")
    try:
        out = tmp_path / "R"
        r = guard_bench("--suite", "siuo", "--data", FIXTURES / "siuo", "--out", out,
                        "--backend", "oracle", "--semantic", "off", "--no-plot",
                        "--no-progress", "--judge-backend", "openai", "--judge-model", "judge",
                        "--judge-base-url", server.url)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    res = results_of(out)
    assert res["llm_judge"]["n"] == 2 and res["llm_judge"]["r0"] == 0.0
    assert res["llm_judge"]["effectiveness_rate"] == 0.0 and res["llm_judge"]["error_rate"] == 0
    assert res["run"]["judge"].startswith("judge@")
    body = server.requests[0]
    assert body["model"] == "judge" and "logprobs" not in body
    user = body["messages"][-1]["content"][-1]["text"]
    assert "power lines" in user or "nightshade" in user  # the SIUO safety warning
    assert (res["n_bad"], res["bad_items"][0]["id"]) == (1, "9107")


@pytest.mark.parametrize("suite,folder,n", [
    ("siuo", "siuo", 2), ("mssbench", "mssbench", 11), ("vlsbench", "vlsbench", 2),
    ("safeagentbench", "safeagentbench", 8), ("ood-mmsafe", "ood_mmsafe", 2),
])
def test_every_public_suite_fixture_runs_through_the_cli(suite, folder, n, tmp_path):
    r = guard_bench("--suite", suite, "--data", FIXTURES / folder, "--out", tmp_path / "R",
                    "--backend", "oracle", "--semantic", "off", "--no-plot", "--no-progress")
    assert r.returncode == 0, r.stderr
    res = results_of(tmp_path / "R")
    assert (res["n"], res["r0"]) == (n, 0.0) and res["n_bad"] >= 1


def test_usage_errors_exit_2_with_one_line(tmp_path):
    r = guard_bench("--suite", "siuo", "--data", tmp_path / "nope", "--out", tmp_path / "R")
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
    r = guard_bench("--suite", "nope", "--data", tmp_path, "--out", tmp_path / "R")
    assert r.returncode == 2
    r = guard_bench("--suite", "siuo", "--data", FIXTURES / "siuo", "--out", tmp_path / "R",
                    "--backend", "oracle", "--concurrency", "0")
    assert r.returncode == 2 and "--concurrency" in r.stderr


def test_a_model_that_does_not_load_exits_1(tmp_path):
    r = guard_bench("--suite", "siuo", "--data", FIXTURES / "siuo", "--out", tmp_path / "R",
                    "--model", tmp_path / "no-model", "--semantic", "off")
    assert r.returncode == 1 and "did not load" in r.stderr
    assert "Traceback" not in r.stderr


DOWN_JUDGE = """
model:
  backend: scripted
  scripted:
    responses:
      - raise_error: "connection refused"
"""


def test_a_judge_that_could_not_be_reached_exits_1_and_says_so(tmp_path):
    config = tmp_path / "down.yaml"
    config.write_text(DOWN_JUDGE)
    out = tmp_path / "R"
    r = guard_bench("--suite", "siuo", "--data", FIXTURES / "siuo", "--out", out,
                    "--config", config, "--semantic", "off", "--no-plot", "--no-progress")
    assert r.returncode == 1
    assert "2 items scored, 2 failed to run (error 2)" in r.stdout
    assert "R0 n/a" in r.stdout
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        "guard bench: the judge could not be reached: none of the 2 checks ran (error 2); "
        "re-run the same command once it is up"]
    res = results_of(out)
    assert (res["n"], res["failed"], res["failed_by_status"], res["r0"]) == (
        2, 2, {"error": 2}, None)
    assert res["judge_unreachable"] is True


def test_openai_judge_on_a_closed_port_then_back_up(tmp_path):
    """A real HTTP failure: nothing listens on the port. The re-run, with the server up on
    the same address, judges every item again and exits 0."""
    port = free_port()
    config = tmp_path / "openai.yaml"
    config.write_text(f"model:\n  backend: openai\n  openai:\n    base_url: http://127.0.0.1:{port}/v1\n"
                      "    logprobs: false\n")
    args = ("--suite", "safeagentbench", "--data", FIXTURES / "safeagentbench_1009",
            "--out", tmp_path / "R", "--backend", "openai", "--model", "judge", "--config",
            config, "--semantic", "off", "--no-plot", "--no-progress")
    r = guard_bench(*args)
    assert r.returncode == 1 and "could not be reached" in r.stderr, r.stderr
    assert "15 items scored, 15 failed to run (error 15)" in r.stdout
    recs = [json.loads(ln) for ln in (tmp_path / "R" / "per_item.jsonl").read_text().splitlines()]
    assert all("Connection refused" in rec["decision"]["rationale"] or
               "onnect" in rec["decision"]["rationale"] for rec in recs)

    server = FakeOpenAIServer("VETO\nrisk: 0.9\nhazard: fire | a hazard | harm | 0.9", port)
    try:
        r = guard_bench(*args)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert len(server.requests) == 15  # every failed item asked again
    res = results_of(tmp_path / "R")
    assert (res["n"], res["failed"], res["run"]["retried_items"]) == (15, 0, 15)
    assert (res["r0"], res["false_veto_rate"]) == (0.0, 1.0)
    assert "0 failed to run" in r.stdout
    assert len((tmp_path / "R" / "per_item.jsonl").read_text().splitlines()) == 15


def test_max_failed_share_decides_the_exit_code(tmp_path):
    # the desk lamp check fails: 1 of 8, 0.125 of the run
    config = tmp_path / "one_down.yaml"
    config.write_text(
        "model:\n  backend: scripted\n  scripted:\n    responses:\n"
        "      - text: \"ALLOW\\nrisk: 0.0\"\n"
        "    by_action:\n      Turn on the desk lamp:\n        raise_error: timeout upstream\n")
    args = ("--suite", "safeagentbench", "--data", FIXTURES / "safeagentbench",
            "--config", config, "--semantic", "off", "--no-plot", "--no-progress")
    r = guard_bench(*args, "--out", tmp_path / "A")
    assert r.returncode == 1, r.stderr
    assert "1 of 8 checks did not run (error 1), more than --max-failed-share 0.05" in r.stderr
    assert "8 items scored, 1 failed to run (error 1)" in r.stdout
    r = guard_bench(*args, "--out", tmp_path / "B", "--max-failed-share", "0.2")
    assert r.returncode == 0, r.stderr
    res = results_of(tmp_path / "B")
    assert (res["failed"], res["n_ran"], res["failed_over_limit"]) == (1, 7, False)
    r = guard_bench(*args, "--out", tmp_path / "C", "--max-failed-share", "2")
    assert r.returncode == 2 and "--max-failed-share" in r.stderr


def test_limit_keeps_both_labels_through_the_cli(tmp_path):
    r = guard_bench("--suite", "safeagentbench", "--data", FIXTURES / "safeagentbench_1009",
                    "--out", tmp_path / "R", "--backend", "oracle", "--limit", "3",
                    "--semantic", "off", "--no-plot", "--no-progress")
    assert r.returncode == 0, r.stderr
    res = results_of(tmp_path / "R")
    assert (res["n"], res["n_safe"], res["n_unsafe"], res["r0"]) == (3, 1, 2, 0.0)
