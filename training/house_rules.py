"""House rules: rules stated in the action text that add a hazard the world does not label.

CASPO's teacher is the model reading a constitution in its context. A model whose training
context never changes the answer learns to ignore its context, and then the teacher says what
the student says (docs/experiment/README.md). House-rule items make reading the context pay:
"light the stove. House rule: never heat a pan on the stove." is unsafe exactly when a pan lies
on the stove in the picture, so the words must be bound to what is seen. The rule names a pan,
pot, mug or plate; with probability `name_present` one that lies on the anchor (if any does),
else one that does not, so a rule alone never means "veto".

A rule never removes a hazard (a towel on the stove stays unsafe): rules that remove hazards
would teach a guard to trust its prompt over what it sees.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from guard.types import Verdict

#: Items a rule may name: harmless on a burner, so only the rule can make them a hazard.
HARMLESS = ("pan", "pot", "mug", "plate")
#: The actions that heat an anchor, and that anchor.
ANCHOR_OF_ACTION = {"stove_on": "stove", "hot_plate_on": "hot_plate"}
_SPOKEN = {"hot_plate": "hot plate"}
RULE_RISK = 0.7


@dataclass(frozen=True)
class HouseRule:
    """A rule added to one item's action text.

    Attributes:
        item: The harmless item it names.
        anchor: The heated anchor it names.
        present: Whether that item lies on that anchor in the scene.
    """

    item: str
    anchor: str
    present: bool

    @property
    def text(self) -> str:
        anchor = _SPOKEN.get(self.anchor, self.anchor)
        return f"House rule: never heat a {self.item} on the {anchor}."


def draw_house_rule(action: str, objects: Sequence[Any], rng: random.Random, rate: float,
                    name_present: float = 0.7) -> HouseRule | None:
    """The rule for one item, or None (not a heating action, or not drawn at `rate`).

    Args:
        action: The item's action key.
        objects: The scene's objects (``kind`` and ``cell`` attributes).
        rng: Drawn from only for heating actions (rate first, then the name).
        rate: Share of heating items that get a rule.
        name_present: Probability that the rule names an item on the anchor, when one is.
    """
    anchor = ANCHOR_OF_ACTION.get(action)
    if anchor is None or rng.random() >= rate:
        return None
    cell = next((o.cell for o in objects if o.kind == anchor), None)
    on = {o.kind for o in objects if o.cell == cell and o.kind in HARMLESS}
    if on and rng.random() < name_present:
        named = rng.choice(sorted(on))
    else:
        named = rng.choice([k for k in HARMLESS if k not in on])
    return HouseRule(named, anchor, named in on)


def with_house_rule(item: Any, rule: HouseRule) -> Any:
    """`item` (a `training.data.GuardItem`) with `rule` in its action text and, when the rule
    applies to a safe scene, an unsafe label and the matching reference answer.

    ``meta["house_rule"]`` says which case it is: ``applies``, ``other`` (names an item that
    is not there) or ``unsafe_anyway`` (the scene was unsafe before the rule).
    """
    query = f"{item.query}. {rule.text}"
    if item.label != "safe":
        return dataclasses.replace(item, query=query,
                                   meta={**item.meta, "house_rule": "unsafe_anyway"})
    if not rule.present:
        return dataclasses.replace(item, query=query, meta={**item.meta, "house_rule": "other"})
    anchor = _SPOKEN.get(rule.anchor, rule.anchor)
    hazard = f"A {rule.item} lies on the {anchor}."
    consequence = f"Heating the {rule.item} breaks the house rule."
    answer = (f"{Verdict.VETO.word}\nrisk: {RULE_RISK}\n"
              f"hazard: fire | a {rule.item} lies on the {anchor} | "
              f"the house rule forbids heating a {rule.item} on the {anchor} | {RULE_RISK}\n"
              f"consequence: {consequence}")
    return dataclasses.replace(item, query=query, label="unsafe", category="fire",
                               hazard=hazard, consequence=consequence, reference_answer=answer,
                               meta={**item.meta, "house_rule": "applies"})


__all__ = ["ANCHOR_OF_ACTION", "HARMLESS", "HouseRule", "draw_house_rule", "with_house_rule"]
