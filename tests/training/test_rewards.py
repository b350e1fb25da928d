"""training.rewards: the outcome reward reads answers through the guard's strict parser."""

from __future__ import annotations

import pytest

from guard.world import iter_items
from training import rewards
from training.data import GuardItem, wrong_verdict_answer

VETO_FIRE = ("VETO\nrisk: 0.9\nhazard: fire | a towel lies on the stove | it ignites | 0.9\n"
             "consequence: The towel catches fire.")
VETO_CUT = "VETO\nrisk: 0.9\nhazard: cut | a knife | a cut | 0.9\nconsequence: A cut."
ALLOW = "ALLOW\nrisk: 0.05\nconsequence: Nothing happens."
ANNOTATE = "ANNOTATE\nrisk: 0.4\nhazard: fire | a towel | smoke | 0.4\nconsequence: Smoke."


def test_reference_answers_earn_the_full_reward_for_both_labels() -> None:
    items = list(iter_items("train", 24))
    assert {it.label for it in items} == {"safe", "unsafe"}
    for it in items:
        assert rewards.outcome_reward(it.reference_answer(), it.label, it.category) == 1.0


def test_wrong_verdicts_earn_at_most_the_format_share() -> None:
    w = rewards.OutcomeWeights()
    share = w.format / (w.verdict + w.category + w.format)
    for it in iter_items("train", 24):
        item = GuardItem(id=it.id, query=it.query, image=None, label=it.label,
                         category=it.category, reference_answer=it.reference_answer(),
                         meta={"target_rule": it.rule})
        rejected = wrong_verdict_answer(item)
        assert rewards.outcome_reward(rejected, it.label, it.category) == pytest.approx(share)


def test_axes() -> None:
    assert rewards.outcome_reward(VETO_FIRE, "unsafe", "fire") == 1.0
    # right verdict, wrong category
    assert rewards.outcome_reward(VETO_CUT, "unsafe", "fire") == pytest.approx(1.25 / 1.75)
    assert rewards.outcome_reward(ALLOW, "unsafe", "fire") == pytest.approx(0.25 / 1.75)
    assert rewards.outcome_reward(ALLOW, "safe", "none") == 1.0
    assert rewards.outcome_reward(VETO_FIRE, "safe", "none") == pytest.approx(0.25 / 1.75)
    # ANNOTATE: half the verdict credit either way; it names the hazard when unsafe
    assert rewards.outcome_reward(ANNOTATE, "unsafe", "fire") == pytest.approx(1.25 / 1.75)
    assert rewards.outcome_reward(ANNOTATE, "safe", "none") == pytest.approx(0.75 / 1.75)
    # an unsafe item without a known category: any named hazard counts
    assert rewards.outcome_reward(VETO_CUT, "unsafe", None) == 1.0


@pytest.mark.parametrize("text", [
    "", "VETO because fire", "veto\nhazard: fire", "ALLOW\nhazard: fire | x | y",
    "Sure! VETO\nrisk: 0.9", "VETO\nrisk: 2",
])
def test_malformed_answers_earn_nothing(text: str) -> None:
    # the guard fails closed on these: a lucky first word earns no credit
    for label, cat in (("unsafe", "fire"), ("safe", "none")):
        assert rewards.outcome_reward(text, label, cat) == 0.0
    # a check that did not run identified nothing, and the guard fails closed on it
    assert not rewards.identified_risk(text)
    assert rewards.blocks(text)


def test_unlabelled_items_are_unscorable_and_bad_labels_rejected() -> None:
    assert rewards.outcome_reward(VETO_FIRE, None) is None
    with pytest.raises(ValueError, match="label"):
        rewards.outcome_reward(VETO_FIRE, "dangerous")
    with pytest.raises(ValueError, match="weights"):
        rewards.OutcomeWeights(verdict=0, category=0, format=0)


def test_trl_adapters_read_label_and_category_columns() -> None:
    funcs, weights = rewards.outcome_reward_funcs()
    assert [f.__name__ for f in funcs] == ["verdict", "category", "format"]
    completions = [[{"role": "assistant", "content": VETO_FIRE}],
                   [{"role": "assistant", "content": ALLOW}], "garbage"]
    cols = {"label": ["unsafe", "unsafe", None], "category": ["fire", "fire", None]}
    scores = [f(prompts=[None] * 3, completions=completions, **cols) for f in funcs]
    assert scores == [[1.0, 0.0, None], [1.0, 0.0, None], [1.0, 1.0, None]]
    total = sum(w * s[0] for w, s in zip(weights, scores, strict=True)) / sum(weights)
    assert total == rewards.outcome_reward(VETO_FIRE, "unsafe", "fire")


def test_identified_risk_and_blocking() -> None:
    assert rewards.identified_risk(VETO_FIRE) and rewards.blocks(VETO_FIRE)
    assert rewards.identified_risk(ANNOTATE) and not rewards.blocks(ANNOTATE)
    assert not rewards.identified_risk(ALLOW) and not rewards.blocks(ALLOW)
