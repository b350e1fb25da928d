import json

import numpy as np
import pytest
from pydantic import ValidationError

from guard.types import ActionProposal, Decision, Frame, Hazard, Status, Verdict

CONTRACT_FIELDS = {
    "id", "verdict", "status", "risk", "hazards", "rationale", "latency_ms", "model", "policy",
    "frame_stamp",
}


def test_decision_json_has_every_contract_field_with_contract_values():
    d = Decision(
        verdict=Verdict.VETO, status=Status.TIMEOUT, risk=1.0,
        hazards=[Hazard(category="fire", description="towel", consequence="ignites",
                        severity=0.8)],
    )
    data = json.loads(d.to_json())
    assert CONTRACT_FIELDS <= set(data)
    assert data["verdict"] == "veto" and data["status"] == "timeout"
    assert data["hazards"][0] == {
        "category": "fire", "description": "towel", "consequence": "ignites", "severity": 0.8
    }
    assert data["frame_stamp"] is None
    assert Decision.model_validate_json(d.to_json()) == d


def test_status_and_verdict_values_are_the_contract_sets():
    assert {s.value for s in Status} == {
        "ok", "timeout", "error", "stale_frame", "no_frame", "invalid_input"
    }
    assert {v.value for v in Verdict} == {"allow", "annotate", "veto"}


def test_most_restrictive_orders_veto_over_annotate_over_allow():
    assert Verdict.most_restrictive(Verdict.ALLOW, Verdict.VETO) is Verdict.VETO
    assert Verdict.most_restrictive(Verdict.ANNOTATE, Verdict.ALLOW) is Verdict.ANNOTATE
    assert Verdict.most_restrictive(Verdict.ALLOW) is Verdict.ALLOW


@pytest.mark.parametrize("risk", [-0.1, 1.01])
def test_risk_outside_unit_interval_is_rejected(risk):
    with pytest.raises(ValidationError):
        Decision(verdict=Verdict.ALLOW, status=Status.OK, risk=risk)


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)],
)
def test_frame_rejects_non_rgb_uint8(image):
    with pytest.raises(ValidationError):
        Frame(image=image)


def test_proposal_text_includes_description_tool_and_arguments():
    p = ActionProposal(name="stove", description="turn on the stove", arguments={"burner": 2})
    assert p.as_text() == 'turn on the stove (tool: stove) arguments: {"burner": 2}'
    assert ActionProposal(name="move_forward").as_text() == "move_forward"
    assert p.id != ActionProposal(name="stove").id
