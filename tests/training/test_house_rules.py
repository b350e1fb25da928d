"""training.house_rules: a rule in the action text adds a hazard only when the picture has it."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from guard.prompting import parse_answer
from guard.world import Scene
from training.data import GuardItem, world_items
from training.house_rules import HARMLESS, HouseRule, draw_house_rule, with_house_rule

PAN_ON_STOVE = Scene.of(("stove", 0, 1), ("pan", 0, 1), ("mug", 2, 2))
TOWEL_ON_STOVE = Scene.of(("stove", 0, 1), ("towel", 0, 1))


def _item(label: str) -> GuardItem:
    return GuardItem(id="i", query="light the stove", image=None, label=label,
                     category="none" if label == "safe" else "fire",
                     reference_answer="ALLOW\nrisk: 0.05" if label == "safe" else "VETO",
                     meta={"action": "stove_on"})


def test_only_heating_actions_get_rules_and_names_follow_the_picture() -> None:
    rng = random.Random(0)
    assert draw_house_rule("tap_on", PAN_ON_STOVE.objects, rng, rate=1.0) is None
    assert draw_house_rule("stove_on", PAN_ON_STOVE.objects, rng, rate=0.0) is None
    rules = [draw_house_rule("stove_on", PAN_ON_STOVE.objects, rng, rate=1.0)
             for _ in range(400)]
    assert all(r is not None and r.anchor == "stove" and r.item in HARMLESS for r in rules)
    present = [r for r in rules if r is not None and r.present]
    # the pan (on the stove) is named with probability 0.7; the mug is elsewhere, never "present"
    assert {r.item for r in present} == {"pan"}
    assert 0.6 < len(present) / len(rules) < 0.8
    cold = draw_house_rule("stove_on", TOWEL_ON_STOVE.objects, rng, rate=1.0)
    assert cold is not None and not cold.present  # nothing harmless lies on it


def test_a_rule_adds_a_hazard_and_never_removes_one() -> None:
    applies = with_house_rule(_item("safe"), HouseRule("pan", "stove", present=True))
    assert applies.query == "light the stove. House rule: never heat a pan on the stove."
    assert (applies.label, applies.category, applies.meta["house_rule"]) == (
        "unsafe", "fire", "applies")
    answer = parse_answer(applies.reference_answer)
    assert answer.verdict.name == "VETO" and answer.hazards[0].category == "fire"

    other = with_house_rule(_item("safe"), HouseRule("mug", "hot_plate", present=False))
    assert other.query.endswith("never heat a mug on the hot plate.")
    assert (other.label, other.reference_answer, other.meta["house_rule"]) == (
        "safe", "ALLOW\nrisk: 0.05", "other")

    unsafe = with_house_rule(_item("unsafe"), HouseRule("pan", "stove", present=True))
    assert (unsafe.label, unsafe.reference_answer, unsafe.meta["house_rule"]) == (
        "unsafe", "VETO", "unsafe_anyway")


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_world_items_with_house_rules(rate: float) -> None:
    pytest.importorskip("cv2")
    plain = world_items("train", 40, seed=3)
    ruled = world_items("train", 40, seed=3, house_rules=rate, house_rule_seed=1)
    kinds = Counter(i.meta.get("house_rule") for i in ruled)
    heating = [p.meta["action"] in ("stove_on", "hot_plate_on") for p in plain]
    assert sum(heating) > 0
    for p, r, heats in zip(plain, ruled, heating, strict=True):
        assert r.id == p.id
        if rate == 0.0 or not heats:
            assert (r.query, r.label, r.reference_answer) == (p.query, p.label, p.reference_answer)
        else:
            assert "House rule:" in r.query
            assert r.label == "unsafe" or p.label == "safe"  # never unsafe -> safe
    if rate == 1.0:
        assert kinds[None] == len(plain) - sum(heating)
