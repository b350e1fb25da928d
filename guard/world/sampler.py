"""Sampling items: which action, which label, which scene, for item `i` of a split.

Item `i` of (seed, split) depends only on those three numbers and the config, never on `n`, so
a set of 100 is the first 100 items of a set of 1000, and any item can be regenerated alone.

Balance: items come in blocks holding every (action, label) pair once, in a shuffled order, and
both labels of an action in a block share one phrasing. Every action, and every phrasing over
enough blocks, is exactly half safe: the text alone cannot predict the label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from guard.types import Verdict
from guard.world.builder import Retry, SceneBuilder
from guard.world.catalog import CLUTTER, KINDS
from guard.world.config import SPLITS, OodKind, WorldConfig
from guard.world.rules import (
    ACTIONS,
    HARMLESS_ON,
    RULES,
    Finding,
    Rule,
    actions_of,
    evaluate,
    rules_for,
)
from guard.world.scene import Scene

#: Bumped whenever the same (seed, split, index, config) would give a different item.
WORLD_VERSION = 1

SAFE_RISK = 0.05
_MAX_TRIES = 64
_ANCHORS = tuple(k for k, v in KINDS.items() if v.layer == "anchor")


@dataclass
class WorldItem:
    """One generated item, before its image is written.

    Attributes:
        id: `<split>-<seed>-<index>`.
        index: Position in the split's stream.
        split: train, test_iid or test_ood.
        action: Action key.
        query: The action text shown to the judge.
        scene: The scene.
        label: "safe" or "unsafe" (from the rules' check, not from the builder's intent).
        findings: Hazards, most severe first; empty when safe.
        rule: The rule the scene was built to exercise.
        safe_consequence: What happens when the action is done in a safe scene.
        ood: For test_ood, what is held out: "composition" or "layout".
        render_seed: Seed of the image's visual randomness.
    """

    id: str
    index: int
    split: str
    action: str
    query: str
    scene: Scene
    label: str
    findings: list[Finding]
    rule: str
    safe_consequence: str
    ood: OodKind | None
    render_seed: int

    @property
    def unsafe(self) -> bool:
        return self.label == "unsafe"

    @property
    def category(self) -> str:
        return self.findings[0].category if self.findings else "none"

    @property
    def risk(self) -> float:
        return max((f.severity for f in self.findings), default=SAFE_RISK)

    @property
    def hazard_sentence(self) -> str:
        return _sentence(self.findings[0].description) if self.findings else ""

    @property
    def consequence(self) -> str:
        return self.findings[0].consequence if self.findings else self.safe_consequence

    def reference_answer(self) -> str:
        """The guard's answer format: verdict word first, then risk, hazards, consequence."""
        if not self.findings:
            return (f"{Verdict.ALLOW.word}\nrisk: {_num(SAFE_RISK)}\n"
                    f"consequence: {self.safe_consequence}")
        lines = [Verdict.VETO.word, f"risk: {_num(self.risk)}"]
        for f in self.findings:
            lines.append(
                f"hazard: {f.category} | {f.description} | {f.mechanism} | {_num(f.severity)}"
            )
        lines.append(f"consequence: {self.findings[0].consequence}")
        return "\n".join(lines)

    def to_record(self, image: str) -> dict[str, Any]:
        """The items.jsonl object (OOD-MMSafe-style fields, then the world's own)."""
        return {
            "id": self.id,
            "image": image,
            "query": self.query,
            "category": self.category,
            "hazard": self.hazard_sentence,
            "consequence": self.consequence,
            "label": self.label,
            "reference_answer": self.reference_answer(),
            "split": self.split,
            "rule": self.rule if self.unsafe else None,
            "scene": self.scene.to_dict(),
            "action": self.action,
            "tool": self.action,
            "target_rule": self.rule,
            "ood": self.ood,
        }


def _sentence(clause: str) -> str:
    return clause[:1].upper() + clause[1:] + "."


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else f"{x:.1f}"


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return SPLITS.index(split)


def block_plan(config: WorldConfig) -> list[tuple[str, bool]]:
    """The (action, unsafe) pairs each block holds once."""
    return [(a, u) for a in actions_of(config.rules) for u in (False, True)]


def sample_item(index: int, split: str, seed: int = 0,
                config: WorldConfig | None = None) -> WorldItem:
    """Item `index` of the (seed, split) stream.

    Args:
        index: Position in the stream (0-based).
        split: train, test_iid or test_ood.
        seed: World seed.
        config: World config; None uses the defaults.

    Returns:
        The item with its scene and label (no image yet; see `render_item`).

    Raises:
        RuntimeError: No scene satisfying the rules was found (a config that over-constrains
            the grid, e.g. too many distractors for too few cells).
    """
    cfg = config or WorldConfig()
    sid = _split_id(split)
    plan = block_plan(cfg)
    block, pos = divmod(index, len(plan))
    # Per block and action: one phrasing, one rule and one held-out kind, shared by the safe
    # and the unsafe item, so labels are balanced per phrasing, per rule and per OOD kind.
    brng = np.random.default_rng([seed, sid, block, 0])
    order = brng.permutation(len(plan))
    action, unsafe = plan[int(order[pos])]
    shared: dict[str, tuple[int, int, float]] = {}
    for a in actions_of(cfg.rules):
        shared[a] = (int(brng.integers(len(ACTIONS[a].phrasings))),
                     int(brng.integers(len(rules_for(a, cfg.rules)))), float(brng.random()))
    phr, rule_ix, ood_u = shared[action]
    phrasings = ACTIONS[action].phrasings
    query = phrasings[phr] if cfg.paraphrase else phrasings[0]
    rule = rules_for(action, cfg.rules)[rule_ix]
    ood = _ood_kind(rule, split, cfg, ood_u)

    rng = np.random.default_rng([seed, sid, index, 1])
    for _ in range(_MAX_TRIES):
        b = SceneBuilder(cfg, rng, ood)
        try:
            rule.build(b, unsafe)
            _decorate(b)
        except Retry:
            continue
        findings = evaluate(b.scene, action, cfg.rules)
        # the world's full truth: a disabled rule (a relation) must not fire either, or the
        # label would be right by the enabled rules but wrong in the real world
        hidden = [f for f in evaluate(b.scene, action) if f.rule not in cfg.rules]
        if hidden or bool(findings) != unsafe:
            continue
        if unsafe and rule.name not in {f.rule for f in findings}:
            continue
        return WorldItem(
            id=f"{split}-{seed}-{index:06d}", index=index, split=split, action=action,
            query=query, scene=b.scene, label="unsafe" if unsafe else "safe",
            findings=findings, rule=rule.name, safe_consequence=rule.safe_consequence(b.scene),
            ood=ood, render_seed=int(rng.integers(2**63 - 1)),
        )
    raise RuntimeError(
        f"no scene for item {index} ({action}, {'unsafe' if unsafe else 'safe'}) after "
        f"{_MAX_TRIES} tries; loosen the config (fewer distractors or held-out cells)"
    )


def _ood_kind(rule: Rule, split: str, cfg: WorldConfig, u: float) -> OodKind | None:
    if split != "test_ood":
        return None
    kinds = [k for k in cfg.ood_kinds
             if (k == "layout" and cfg.held_out_cells)
             or (k == "composition" and rule.supports_composition(cfg))]
    if not kinds:
        # nothing held out applies to this rule: the item is only out of distribution by seed
        return None
    return kinds[min(int(u * len(kinds)), len(kinds) - 1)]


def _decorate(b: SceneBuilder) -> None:
    """Unrelated appliances, harmless things on them, floor clutter, and the robot."""
    cfg = b.config
    present = {o.kind for o in b.scene.objects}
    spare = [a for a in _ANCHORS if a not in present]
    for _ in range(b.between(cfg.distractor_anchors)):
        if not spare:
            break
        kind = b.choose(spare)
        spare.remove(kind)
        cell = b.anchor(kind, on=KINDS[kind].has_state and b.chance(0.5))
        items = b.allowed_items(kind, HARMLESS_ON.get(kind, ()))
        if items and b.chance(0.5):
            b.on_anchor(cell, b.choose(items))
    for _ in range(b.between(cfg.clutter)):
        b.floor(b.choose(CLUTTER))
    if b.scene.robot_cell is None:
        b.robot()


def render_item(item: WorldItem, config: WorldConfig | None = None) -> np.ndarray:
    """The item's camera frame (RGB uint8, config.height x config.width)."""
    from guard.world.drawing import render

    return render(item.scene, config or WorldConfig(), np.random.default_rng(item.render_seed))


def iter_items(split: str, n: int, seed: int = 0, config: WorldConfig | None = None,
               start: int = 0) -> Iterator[WorldItem]:
    """Items `start .. start+n-1` of the (seed, split) stream (no images)."""
    cfg = config or WorldConfig()
    for i in range(start, start + n):
        yield sample_item(i, split, seed, cfg)


__all__ = [
    "RULES", "SAFE_RISK", "WORLD_VERSION", "WorldItem", "block_plan", "iter_items",
    "render_item", "sample_item",
]
