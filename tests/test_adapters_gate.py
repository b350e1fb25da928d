"""`ToolGate`, the judging half every agent-framework adapter shares: one judgement per call,
approval of annotated calls that fails closed, and every answer audited."""

from __future__ import annotations

import asyncio
import json

import pytest

from guard.middleware import ToolGate
from guard.types import Status, Verdict
from tests.adapters_common import (
    CONSEQUENCE,
    Approvals,
    broken_camera,
    camera,
    decisions_for,
    make_guard,
    records,
)


@pytest.fixture
def guard(audit_path):
    g = make_guard(audit_path)
    yield g
    g.close()


def test_allow_runs_and_veto_carries_the_consequence(guard, audit_path):
    gate = ToolGate(guard, frames=camera())
    allowed = gate.check("move_to", {"place": "sink"}, description="Drive to a place")
    assert allowed.run and allowed.outcome == "allow" and allowed.message == ""
    vetoed = gate.check("turn_on_stove", '{"burner": 2}', description="Light a burner",
                        call_id="call_7")
    assert not vetoed.run and vetoed.outcome == "veto"
    body = json.loads(vetoed.message)
    assert body["error"] == "vetoed_by_safety_guard"
    assert body["hazards"][0]["consequence"] == CONSEQUENCE
    # the framework's call id is the proposal id: the audit record joins the agent's trace
    (record,) = decisions_for(audit_path, "turn_on_stove")
    assert record["proposal"]["id"] == "call_7" and record["decision"]["verdict"] == "veto"
    assert record["proposal"]["arguments"] == {"burner": 2}


def test_arguments_that_are_not_a_json_object_are_an_audited_veto(guard, audit_path):
    gate = ToolGate(guard, frames=camera())
    for raw in ('{"burner": ', "[1, 2]"):
        result = gate.check("move_to", raw)
        assert not result.run and result.decision.status is Status.INVALID_INPUT
    assert [r["decision"]["status"] for r in records(audit_path, "decision")] == [
        "invalid_input", "invalid_input"]


def test_a_camera_that_fails_is_a_veto(guard):
    result = ToolGate(guard, frames=broken_camera).check("move_to", {"place": "sink"})
    assert not result.run and result.decision.status is Status.ERROR
    assert "camera unplugged" in (result.decision.error or "")


@pytest.mark.parametrize("answer", [True, False, "yes", None, RuntimeError("pager down")])
def test_annotate_asks_the_approver_and_only_true_runs(guard, audit_path, answer):
    approvals = Approvals(answer)
    result = ToolGate(guard, frames=camera(), approve=approvals).check(
        "move_towel", {"target": "counter"}, description="Move the towel")
    assert len(approvals.asked) == 1
    decision, proposal = approvals.asked[0]
    assert decision.verdict is Verdict.ANNOTATE and proposal.name == "move_towel"
    assert result.run is (answer is True)
    assert result.outcome == ("annotate" if answer is True else "declined")
    (approval,) = records(audit_path, "approval")
    assert approval["decision_id"] == decision.id and approval["approved"] is (answer is True)
    assert approval["by"] == "callback"
    if answer is not True:
        body = json.loads(result.message)
        assert body["error"] == "declined_by_operator" and body["hazards"]
        assert ("error" in approval) is (not isinstance(answer, bool))


def test_allow_and_veto_never_ask_the_approver(guard):
    approvals = Approvals(True)
    gate = ToolGate(guard, frames=camera(), approve=approvals)
    assert gate.check("move_to", {"place": "sink"}).run
    assert not gate.check("turn_on_stove", {"burner": 1}).run
    assert approvals.asked == []


def test_shadow_mode_never_asks_and_never_blocks(audit_path):
    guard = make_guard(audit_path, mode="shadow")
    try:
        approvals = Approvals(False)
        gate = ToolGate(guard, frames=camera(), approve=approvals)
        assert gate.check("move_towel", {"target": "sink"}).run
        assert gate.check("turn_on_stove", {"burner": 1}).run
        assert approvals.asked == []
    finally:
        guard.close()


def test_async_approver_is_awaited_and_refused_from_sync_code(guard, audit_path):
    async def approve(decision, proposal):
        await asyncio.sleep(0)
        return True

    gate = ToolGate(guard, frames=camera(), approve=approve)
    assert asyncio.run(gate.acheck("move_towel", {"target": "sink"})).run
    sync = gate.check("move_towel", {"target": "sink"})
    assert not sync.run and "async approver" in json.loads(sync.message)["reason"]
    assert [r["approved"] for r in records(audit_path, "approval")] == [True, False]


def test_an_approval_that_cannot_be_audited_is_a_refusal(guard):
    approvals = Approvals(True)
    gate = ToolGate(guard, frames=camera(), approve=approvals)
    decision_only = gate.check("move_towel", {"target": "sink"})
    assert decision_only.run

    real_append = guard.audit.append

    def append(kind, payload):
        if kind == "approval":
            raise OSError("disk full")
        return real_append(kind, payload)

    guard.audit.append = append  # type: ignore[method-assign]
    result = gate.check("move_towel", {"target": "sink"})
    assert not result.run and "could not be audited" in json.loads(result.message)["reason"]


def test_the_judge_reads_the_descriptions_first_line(guard, audit_path):
    """As for a decorated tool's docstring and an MCP tool in `guard mcp-proxy`: one tool is
    one proposal, whichever front end it arrives through."""
    ToolGate(guard, frames=camera()).check(
        "move_to", {"place": "sink"},
        description="\n  Drive the robot base to a named place.\n\n  Args:\n    place: where.\n")
    (record,) = decisions_for(audit_path, "move_to")
    assert record["proposal"]["description"] == "Drive the robot base to a named place."
