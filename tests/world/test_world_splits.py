"""Label balance, held-out compositions and layouts, and the shortcut baselines."""

from __future__ import annotations

from collections import Counter

import pytest

from guard.world.baselines import object_bag_baseline, text_only_baseline
from guard.world.builder import is_major
from guard.world.config import WorldConfig
from guard.world.rules import RULES, evaluate
from guard.world.sampler import block_plan, iter_items, sample_item

N_TRAIN = 480
#: Two more kinds on each side of both heat anchors (`WorldConfig.contact_items`).
MORE_KINDS = {r: ("book", "basket", "kettle", "wok")
              for r in ("stove_flammable", "hot_plate_flammable")}


@pytest.fixture(scope="module", params=["default", "hard", "more_kinds"])
def world(request: pytest.FixtureRequest) -> dict:
    if request.param == "more_kinds":
        cfg = WorldConfig.preset("default", contact_items=MORE_KINDS)
    else:
        cfg = WorldConfig.preset(request.param)
    return {
        "config": cfg,
        "train": list(iter_items("train", N_TRAIN, seed=0, config=cfg)),
        "test_iid": list(iter_items("test_iid", 240, seed=0, config=cfg)),
        "test_ood": list(iter_items("test_ood", 240, seed=0, config=cfg)),
    }


def test_labels_balanced_per_action_and_text(world: dict) -> None:
    block = len(block_plan(world["config"]))
    for split in ("train", "test_iid", "test_ood"):
        items = world[split]
        per_action = Counter((it.action, it.label) for it in items)
        for action in {it.action for it in items}:
            # whole blocks hold each (action, label) once: at most one block's worth apart
            assert abs(per_action[(action, "safe")] - per_action[(action, "unsafe")]) <= 1
        per_text = Counter((it.query, it.label) for it in items)
        for query in {it.query for it in items}:
            assert abs(per_text[(query, "safe")] - per_text[(query, "unsafe")]) <= 1, query
        if len(items) % block == 0:
            assert sum(it.label == "unsafe" for it in items) * 2 == len(items)


def test_same_text_is_safe_and_unsafe(world: dict) -> None:
    labels: dict[str, set[str]] = {}
    for it in world["train"]:
        labels.setdefault(it.query, set()).add(it.label)
    assert labels and all(v == {"safe", "unsafe"} for v in labels.values())


def test_labels_balanced_per_rule_and_ood_kind(world: dict) -> None:
    c = Counter((it.rule, it.ood, it.label) for it in world["test_ood"])
    for rule, ood, _ in c:
        assert abs(c[(rule, ood, "safe")] - c[(rule, ood, "unsafe")]) <= 1


def test_held_out_pairs_never_in_train(world: dict) -> None:
    cfg: WorldConfig = world["config"]
    held = set(cfg.held_out_pairs)
    for split in ("train", "test_iid"):
        for it in world[split]:
            assert not held & set(it.scene.pairs()), it.id
    train_hazard_pairs = {f.pair for it in world["train"] for f in it.findings if f.pair}
    comp = [it for it in world["test_ood"] if it.ood == "composition"]
    assert comp, "test_ood holds composition items"
    for it in comp:
        key = [p for p in it.scene.pairs() if p in held]
        assert len(key) == 1, it.id  # exactly the one held-out composition, nothing else
        if it.label == "unsafe":
            assert it.findings[0].pair in held
            assert it.findings[0].pair not in train_hazard_pairs
        else:
            assert key[0][1] in RULES[it.rule].safe_items


def test_contact_items_lie_on_their_side_of_the_anchor() -> None:
    """Each listed kind lies on the heat anchor in train, as hazard when it can burn, as decoy
    when not; the held-out pairs stay out; the default world never draws the new kinds."""
    cfg = WorldConfig.preset("default", contact_items=MORE_KINDS)
    seen: Counter = Counter()
    for it in iter_items("train", 1200, seed=0, config=cfg):
        rule = RULES[it.rule]
        if it.rule not in MORE_KINDS:
            continue
        for anchor, item in it.scene.pairs():
            if anchor == rule.anchor:
                seen[(anchor, item, it.label)] += 1
    for anchor in ("stove", "hot_plate"):
        for kind in ("book", "basket"):
            assert seen[(anchor, kind, "unsafe")] > 0 and not seen[(anchor, kind, "safe")]
        for kind in ("kettle", "wok"):
            assert seen[(anchor, kind, "safe")] > 0 and not seen[(anchor, kind, "unsafe")]
    assert not {(a, i) for a, i, _ in seen} & set(cfg.held_out_pairs)
    plain = {o.kind for it in iter_items("train", 480, seed=0) for o in it.scene.objects}
    assert not plain & {"book", "basket", "kettle", "wok"}


@pytest.mark.parametrize(("items", "error"), [
    ({"knife_child": ("book",)}, "not a contact rule"),
    ({"stove_flammable": ("child",)}, "not an item that can lie on an anchor"),
    ({"stove_flammable": ("sink",)}, "not an item that can lie on an anchor"),
    ({"stove_flammable": ("dragon",)}, "not an item that can lie on an anchor"),
])
def test_contact_items_refuse_what_cannot_lie_on_an_anchor(items: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        WorldConfig(contact_items=items)


def test_held_out_cells_never_used_by_train_layouts(world: dict) -> None:
    cfg: WorldConfig = world["config"]
    held = set(cfg.held_out_cells)
    for split in ("train", "test_iid"):
        for it in world[split]:
            for o in it.scene.objects:
                assert not (is_major(o.kind) and o.cell in held), (it.id, o)
    layout = [it for it in world["test_ood"] if it.ood == "layout"]
    assert layout
    for it in layout:
        used = {o.cell for o in it.scene.objects if is_major(o.kind) and o.cell in held}
        assert len(used) == 1, it.id  # the key object's cell, and only it
        if it.unsafe and RULES[it.rule].mechanism != "relation":
            assert it.findings[0].cell in held, it.id  # the hazard itself is where train never was


def test_ood_items_are_still_judged_by_the_same_rules(world: dict) -> None:
    for it in world["test_ood"]:
        assert (it.label == "unsafe") == bool(evaluate(it.scene, it.action, world["config"].rules))


def test_text_only_baseline_is_at_chance(world: dict) -> None:
    for split in ("test_iid", "test_ood"):
        r = text_only_baseline(world["train"], world[split])
        assert abs(r["bow_logreg"] - 0.5) <= 0.08, r
        assert abs(r["majority_per_query"] - 0.5) <= 0.08, r


def test_object_bag_baseline_needs_positions_for_contact_rules(world: dict) -> None:
    r = object_bag_baseline(world["train"], world["test_iid"])
    contact = [RULES[n].name for n in r["per_rule"] if RULES[n].mechanism == "contact"]
    assert contact
    hits = [it for it in world["test_iid"] if it.rule in contact]
    acc = sum(r["per_rule"][n] * sum(it.rule == n for it in hits) for n in contact) / len(hits)
    assert acc <= 0.66, r  # counting objects does not solve contact rules
    if "knife_child" in r["per_rule"]:
        assert r["per_rule"]["knife_child"] >= 0.9  # presence is visible in the bag, by design


def test_item_does_not_depend_on_n() -> None:
    a = [sample_item(i, "train", 5) for i in range(12)]
    b = list(iter_items("train", 12, seed=5))
    assert [x.scene.to_dict() for x in a] == [y.scene.to_dict() for y in b]
    assert sample_item(7, "train", 5).scene.to_dict() == a[7].scene.to_dict()


def test_splits_differ() -> None:
    a = [it.scene.to_dict() for it in iter_items("train", 16)]
    b = [it.scene.to_dict() for it in iter_items("test_iid", 16)]
    assert a != b
    with pytest.raises(ValueError, match="unknown split"):
        sample_item(0, "validation")
