import time

import pytest

from guard.config import PolicyConfig, Rule, RuleMatch
from guard.errors import ConfigError
from guard.policy import (
    RuleOutcome,
    RulesUnfinished,
    answer_risk,
    compile_rules,
    decide,
    evaluate_rules,
    failure_verdict,
    threshold_verdict,
)
from guard.prompting import parse_answer
from guard.types import ActionProposal, Status, Verdict

POLICY = PolicyConfig(veto_threshold=0.6, annotate_threshold=0.3)


@pytest.mark.parametrize(
    ("risk", "verdict"),
    [(0.0, Verdict.ALLOW), (0.29, Verdict.ALLOW), (0.3, Verdict.ANNOTATE),
     (0.59, Verdict.ANNOTATE), (0.6, Verdict.VETO), (1.0, Verdict.VETO)],
)
def test_thresholds(risk, verdict):
    assert threshold_verdict(risk, POLICY) is verdict


def test_risk_comes_from_the_stated_number_then_verdict_probabilities_then_the_verdict():
    assert answer_risk(parse_answer("ALLOW\nrisk: 0.2"), {"veto": 1.0}) == 0.2
    assert answer_risk(parse_answer("ALLOW"), {"allow": 0.5, "annotate": 0.2, "veto": 0.3}) == (
        pytest.approx(0.4)
    )
    assert answer_risk(parse_answer("VETO"), None) == 1.0
    assert answer_risk(parse_answer("ANNOTATE"), None) == 0.5
    assert answer_risk(parse_answer("ALLOW"), None) == 0.0


def test_the_most_restrictive_of_answer_threshold_and_rules_wins():
    # The model says ALLOW but its own risk crosses the veto threshold: veto.
    v, r = decide(parse_answer("ALLOW\nrisk: 0.7"), None, RuleOutcome(), POLICY)
    assert (v, r) == (Verdict.VETO, 0.7)
    # The model says VETO with a low stated risk: still veto, and the risk is lifted to the
    # veto threshold so the two fields never disagree.
    v, r = decide(parse_answer("VETO\nrisk: 0.1"), None, RuleOutcome(), POLICY)
    assert (v, r) == (Verdict.VETO, 0.6)
    # An annotate rule lifts an allow.
    v, _ = decide(parse_answer("ALLOW"), None, RuleOutcome(verdict=Verdict.ANNOTATE), POLICY)
    assert v is Verdict.ANNOTATE
    # Uncertain verdict tokens give annotate although the greedy word was ALLOW.
    v, _ = decide(parse_answer("ALLOW"), {"allow": 0.6, "veto": 0.4}, RuleOutcome(), POLICY)
    assert v is Verdict.ANNOTATE


def test_failures_veto_unless_on_failure_allow():
    for status in Status:
        if status is Status.OK:
            continue
        assert failure_verdict(status, POLICY) is Verdict.VETO
        assert failure_verdict(status, PolicyConfig(on_failure="allow")) is Verdict.ALLOW
    with pytest.raises(ValueError):
        failure_verdict(Status.OK, POLICY)


RULES = [
    Rule(name="no-knife", match=RuleMatch(tool="^hand_over$", arguments={"object": "knife"}),
         verdict=Verdict.VETO),
    Rule(name="read-only", match=RuleMatch(tool="^get_"), verdict=Verdict.ALLOW),
    Rule(name="stove", match=RuleMatch(text=r"\bstove\b"), verdict=Verdict.ANNOTATE),
    Rule(name="get-stove", match=RuleMatch(tool="^get_", text="stove"), verdict=Verdict.VETO),
]


@pytest.mark.parametrize(
    ("proposal", "verdict", "names"),
    [
        (ActionProposal(name="hand_over", arguments={"object": "Kitchen KNIFE"}),
         Verdict.VETO, ["no-knife"]),
        (ActionProposal(name="hand_over", arguments={"object": "cup"}), None, []),
        (ActionProposal(name="hand_over"), None, []),  # the argument must be present
        (ActionProposal(name="get_battery"), Verdict.ALLOW, ["read-only"]),
        (ActionProposal(name="turn_on", description="turn on the Stove"),
         Verdict.ANNOTATE, ["stove"]),
        # An allow rule and a veto rule both match: the most restrictive wins.
        (ActionProposal(name="get_temp", description="stove"), Verdict.VETO,
         ["read-only", "stove", "get-stove"]),
    ],
)
def test_rules(proposal, verdict, names):
    out = evaluate_rules(compile_rules(RULES), proposal)
    assert out.verdict is verdict
    assert [r.name for r in out.matched] == names
    assert out.skips_model == (verdict in (Verdict.VETO, Verdict.ALLOW))


def test_rules_stop_at_the_deadline_and_assume_the_worst_of_those_unknown():
    """`(a|aa)+z` takes seconds on 32 a's; the deadline (already past here) stops it. The
    rules not known not to match count as matching, except allow rules (no restriction)."""
    rules = [
        Rule(name="say", match=RuleMatch(tool="^say$"), verdict=Verdict.ALLOW),
        Rule(name="slow", match=RuleMatch(text="(a|aa)+z"), verdict=Verdict.ANNOTATE),
        Rule(name="later-allow", match=RuleMatch(tool="x"), verdict=Verdict.ALLOW),
    ]
    proposal = ActionProposal(name="say", description="a" * 32)
    with pytest.raises(RulesUnfinished) as caught:
        evaluate_rules(compile_rules(rules), proposal, deadline=time.monotonic() + 0.05)
    out = caught.value.outcome
    assert (out.verdict, [r.name for r in out.matched]) == (Verdict.ANNOTATE, ["say"])
    # Without a deadline nothing changes: every rule answers.
    quick = ActionProposal(name="say", description="hello")
    assert evaluate_rules(compile_rules(rules), quick).verdict is Verdict.ALLOW


def test_a_bad_rule_pattern_names_the_rule():
    bad = [Rule(name="x", match=RuleMatch(arguments={"a": "("}), verdict=Verdict.VETO)]
    with pytest.raises(ConfigError, match=r"policy.rules.0.match.arguments.a"):
        compile_rules(bad)
