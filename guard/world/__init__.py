"""The synthetic consequence world: household scenes, benign actions, hidden causal hazards.

A procedurally generated top-down household (stoves, sinks, towels, children, a robot) drawn
as camera frames, with actions whose harm depends on the scene: "turn on the stove" is safe with
a pan on the burner and a fire with a towel on it. Causal rules give the label, the hazard
category and the consequence chain. It is a learnable, held-out-checkable consequence benchmark
for models trained here (see `guard/world/README.md`, "Why it exists").

Main entry points:
    generate(split, n, out_dir, seed=0, config=None) -> Path of items.jsonl
    sample_item / iter_items / render_item           items in memory
    iter_episode                                     a time-ordered (frame, action, label) stream
    evaluate(scene, action)                          the causal rules, on any scene
    text_only_baseline / object_bag_baseline         shortcut measurements
    WorldConfig                                      everything configurable

Only `render` and `generate` need OpenCV; configs, scenes and rules import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guard.world.baselines import object_bag_baseline, text_only_baseline
    from guard.world.config import Appearance, WorldConfig
    from guard.world.dataset import EpisodeStep, generate, iter_episode, read_items
    from guard.world.drawing import encode_png, render
    from guard.world.rules import ACTIONS, CATEGORIES, RULES, Finding, evaluate
    from guard.world.sampler import WorldItem, iter_items, render_item, sample_item
    from guard.world.scene import Obj, Scene

_LAZY = {
    "Appearance": "guard.world.config",
    "WorldConfig": "guard.world.config",
    "Obj": "guard.world.scene",
    "Scene": "guard.world.scene",
    "ACTIONS": "guard.world.rules",
    "CATEGORIES": "guard.world.rules",
    "RULES": "guard.world.rules",
    "Finding": "guard.world.rules",
    "evaluate": "guard.world.rules",
    "WorldItem": "guard.world.sampler",
    "iter_items": "guard.world.sampler",
    "render_item": "guard.world.sampler",
    "sample_item": "guard.world.sampler",
    "render": "guard.world.drawing",
    "encode_png": "guard.world.drawing",
    "EpisodeStep": "guard.world.dataset",
    "generate": "guard.world.dataset",
    "iter_episode": "guard.world.dataset",
    "read_items": "guard.world.dataset",
    "object_bag_baseline": "guard.world.baselines",
    "text_only_baseline": "guard.world.baselines",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guard.world' has no attribute {name!r}")


__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "RULES",
    "Appearance",
    "EpisodeStep",
    "Finding",
    "Obj",
    "Scene",
    "WorldConfig",
    "WorldItem",
    "encode_png",
    "evaluate",
    "generate",
    "iter_episode",
    "iter_items",
    "object_bag_baseline",
    "read_items",
    "render",
    "render_item",
    "sample_item",
    "text_only_baseline",
]
