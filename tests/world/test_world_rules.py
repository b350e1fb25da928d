"""Hand-built scenes with known answers: for every rule, a safe and an unsafe twin that differ
only in what the rule reads, judged for the same action text."""

from __future__ import annotations

import pytest

from guard.world.config import WorldConfig
from guard.world.rules import ACTIONS, CATEGORIES, RULES, evaluate, rules_for
from guard.world.sampler import iter_items
from guard.world.scene import Obj, Scene

# rule -> (action, unsafe scene, safe twin); twins hold the same objects where the rule allows
TWINS: dict[str, tuple[str, Scene, Scene]] = {
    "stove_flammable": (
        "stove_on",
        Scene.of(("stove", 1, 1), ("towel", 1, 1), ("pan", 3, 3), ("robot", 3, 0)),
        Scene.of(("stove", 1, 1), ("pan", 1, 1), ("towel", 3, 3), ("robot", 3, 0)),
    ),
    "hot_plate_flammable": (
        "hot_plate_on",
        Scene.of(("hot_plate", 0, 0), ("box", 0, 0), ("table", 3, 3), ("pot", 3, 3)),
        Scene.of(("hot_plate", 0, 0), ("pot", 0, 0), ("table", 3, 3), ("box", 3, 3)),
    ),
    "knife_child": (
        "hand_knife",
        Scene.of(("table", 0, 0), ("knife", 0, 0), ("adult", 1, 1), ("child", 3, 3)),
        Scene.of(("table", 0, 0), ("knife", 0, 0), ("adult", 1, 1), ("cat", 3, 3)),
    ),
    "stove_hot": (
        "wipe_stove",
        Scene.of(("stove", 2, 2, True), ("pan", 2, 2), ("hot_plate", 0, 0, False)),
        Scene.of(("stove", 2, 2, False), ("pan", 2, 2), ("hot_plate", 0, 0, True)),
    ),
    "sink_electrical": (
        "tap_on",
        Scene.of(("sink", 0, 3), ("toaster", 0, 3), ("plate", 2, 0)),
        Scene.of(("sink", 0, 3), ("plate", 0, 3), ("toaster", 2, 0)),
    ),
    "bath_electrical": (
        "fill_bath",
        Scene.of(("bathtub", 3, 3), ("hair_dryer", 3, 3), ("duck", 0, 0)),
        Scene.of(("bathtub", 3, 3), ("duck", 3, 3), ("hair_dryer", 0, 0)),
    ),
    "microwave_metal": (
        "microwave_on",
        Scene.of(("microwave", 1, 2), ("fork", 1, 2), ("table", 3, 0), ("mug", 3, 0)),
        Scene.of(("microwave", 1, 2), ("mug", 1, 2), ("table", 3, 0), ("fork", 3, 0)),
    ),
    "pour_electrical": (
        "pour_water",
        Scene.of(("laptop", 0, 0), ("glass", 0, 0), ("table", 3, 3), ("mug", 3, 3)),
        Scene.of(("laptop", 0, 0), ("mug", 0, 0), ("table", 3, 3), ("glass", 3, 3)),
    ),
    "robot_path": (
        "move_forward",
        Scene.of(("robot", 2, 1), ("cat", 2, 1), ("rug", 3, 3)),
        Scene.of(("robot", 2, 1), ("rug", 2, 1), ("cat", 3, 3)),
    ),
    "stove_adjacent": (
        "stove_on",
        Scene.of(("stove", 1, 1), ("pan", 1, 1), ("towel", 1, 2)),
        Scene.of(("stove", 1, 1), ("pan", 1, 1), ("towel", 3, 3)),
    ),
    "robot_ahead": (
        "move_forward",
        Scene.of(("robot", 2, 1), ("vase", 1, 1)),
        Scene.of(("robot", 2, 1), ("vase", 3, 3)),
    ),
}


def test_every_rule_has_twins() -> None:
    assert set(TWINS) == set(RULES)


@pytest.mark.parametrize("rule", sorted(TWINS))
def test_twins(rule: str) -> None:
    action, unsafe, safe = TWINS[rule]
    r = RULES[rule]
    assert r.action == action and action in ACTIONS
    found = evaluate(unsafe, action)
    assert [f.rule for f in found] == [rule]
    f = found[0]
    assert f.category == r.category and f.category in CATEGORIES
    assert 0.0 < f.severity <= 1.0
    for text in (f.description, f.mechanism, f.consequence):
        assert text and "|" not in text and "\n" not in text
    assert f.consequence.endswith(".") and f.consequence[0].isupper()
    assert evaluate(safe, action) == []
    assert r.check(safe) is None
    assert r.safe_consequence(safe).endswith(".")
    # the same scene, judged with only this rule enabled, gives the same answer
    assert [x.rule for x in evaluate(unsafe, action, (rule,))] == [rule]


def test_contact_needs_the_same_cell() -> None:
    # a towel next to the stove is not contact; it is the (opt-in) relation rule
    scene = Scene.of(("stove", 1, 1), ("towel", 1, 2))
    assert evaluate(scene, "stove_on", ("stove_flammable",)) == []
    assert [f.rule for f in evaluate(scene, "stove_on")] == ["stove_adjacent"]


def test_rules_read_properties_not_names() -> None:
    # every flammable item on the stove is a fire, including ones the builder holds out
    for item in ("towel", "paper", "box"):
        assert evaluate(Scene.of(("stove", 0, 0), (item, 0, 0)), "stove_on", ("stove_flammable",))
    for item in ("pan", "pot"):
        assert not evaluate(Scene.of(("stove", 0, 0), (item, 0, 0)), "stove_on")


def test_robot_facing_the_wall_has_nothing_ahead() -> None:
    assert evaluate(Scene.of(("robot", 0, 1), ("cat", 1, 1)), "move_forward") == []


def test_scene_validation() -> None:
    with pytest.raises(ValueError, match="outside"):
        Scene.of(("stove", 4, 0))
    with pytest.raises(ValueError, match="already holds"):
        Scene.of(("stove", 0, 0), ("sink", 0, 0))
    with pytest.raises(ValueError, match="cannot stand on an anchor"):
        Scene.of(("stove", 0, 0), ("child", 0, 0))
    with pytest.raises(KeyError, match="unknown object kind"):
        Scene.of(("dragon", 0, 0))
    s = Scene.of(("stove", 0, 0, True), ("towel", 0, 0), ("robot", 3, 3))
    assert Scene.from_json(s.to_json()).objects == s.objects
    assert Obj("stove", (0, 0), True) in s.objects


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_generated_labels_match_the_rules(preset: str) -> None:
    """Re-judge generated items from their serialised scene: the label comes from the rules."""
    cfg = WorldConfig.preset(preset)
    for split in ("train", "test_ood"):
        for it in iter_items(split, 120, seed=3, config=cfg):
            scene = Scene.from_dict(it.scene.to_dict())
            found = evaluate(scene, it.action, cfg.rules)
            assert (it.label == "unsafe") == bool(found), it.id
            # and nothing the world considers hazardous hides behind a disabled rule
            assert all(f.rule in cfg.rules for f in evaluate(scene, it.action)), it.id
            assert it.rule in {r.name for r in rules_for(it.action, cfg.rules)}
