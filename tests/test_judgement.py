"""`Guard.judge` returns how a decision was reached, so replay and bench never read the audit
log back."""

import concurrent.futures as cf

from guard.backends.base import JudgeOutput
from guard.backends.scripted import ScriptedBackend
from guard.core import Guard
from guard.types import ActionProposal, Status, Verdict

VETO = "VETO\nrisk: 0.9\nhazard: fire | towel on burner | it ignites | 0.9"


class AsyncBackend:
    """Answers with the verdict word now and the whole answer later (rationale: async)."""

    name = "async"
    model_id = "async"

    def __init__(self):
        self.future = cf.Future()

    def judge(self, request):
        return JudgeOutput(text="VETO", verdict_probs={"veto": 0.9, "allow": 0.1},
                           timings_ms={"prefill": 1.5}, rationale=self.future)

    def close(self):
        pass


def test_judge_returns_prompt_answer_and_timings(config, frame, audit_path):
    import json

    with Guard(config, backend=ScriptedBackend.answering(VETO)) as g:
        j = g.judge(frame, {"name": "stove_on", "description": "turn on the stove"})
    assert (j.decision.verdict, j.decision.status) == (Verdict.VETO, Status.OK)
    assert j.answer == VETO and j.prompt is not None
    assert "turn on the stove" in j.prompt["user"]
    assert j.proposal is not None and j.proposal.name == "stove_on"
    assert [f.stamp for f in j.frames] == [frame.stamp]
    assert j.judged_sizes == [frame.size]  # 128x96 is within the budget: no resize
    assert j.rationale is None
    (rec,) = [json.loads(x) for x in audit_path.read_text().splitlines()]
    assert rec["judged_sizes"] == [list(frame.size)]


def test_a_failed_check_has_a_judgement_too(config, frame):
    with Guard(config, backend=ScriptedBackend.answering("nonsense")) as g:
        j = g.judge(frame, ActionProposal(name="stove_on"))
    assert j.decision.status is Status.ERROR and j.answer == "nonsense"


def test_an_async_rationale_arrives_on_the_judgement(config, frame):
    backend = AsyncBackend()
    with Guard(config.with_overrides(**{"model.rationale": "async"}), backend=backend) as g:
        j = g.judge(frame, ActionProposal(name="stove_on"))
        assert j.decision.verdict is Verdict.VETO and j.timings_ms == {"prefill": 1.5}
        assert j.rationale is not None and not j.rationale.done()
        backend.future.set_result(VETO + "\nconsequence: The towel ignites.")
        done = j.rationale.result(timeout=5)
    assert done.decision.id == j.decision.id
    assert done.decision.hazards[0].category == "fire"
    assert done.record["agrees"] is True and done.record["rationale"] == "The towel ignites."


def test_integer_frame_time_reaches_the_decision_and_the_audit(config, frame, audit_path):
    import json

    stamp_ns = 1_700_000_000_123_456_789
    timed = frame.model_copy(update={"stamp_ns": stamp_ns, "stamp": stamp_ns / 1e9})
    with Guard(config.with_overrides(**{"policy.max_frame_age_ms": None}),
               backend=ScriptedBackend.answering("ALLOW\nrisk: 0.0")) as g:
        d = g.check(timed, ActionProposal(name="stove_on"))
    assert d.frame_stamp_ns == stamp_ns
    (rec,) = [json.loads(x) for x in audit_path.read_text().splitlines()]
    assert rec["decision"]["frame_stamp_ns"] == stamp_ns
