"""Placing objects into a scene under the split's constraints.

The builder is where the held-out parts of `test_ood` are enforced: in train and test_iid,
anchors, people, pets and the robot never stand in a held-out cell and no held-out (anchor, item)
pair is ever drawn; in a test_ood item only the rule's *key* placement uses the held-out part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np

from guard.world.catalog import FLOOR_ONLY, KINDS, has
from guard.world.config import OodKind, WorldConfig
from guard.world.scene import Cell, Obj, Scene

T = TypeVar("T")


class Retry(Exception):
    """The random draw painted itself into a corner; the sampler starts the scene again."""


def is_major(kind_name: str) -> bool:
    """Objects whose position defines a layout: anchors, people, pets and the robot."""
    k = KINDS[kind_name]
    return k.layer != "item" or has(kind_name, "person") or has(kind_name, "pet")


class SceneBuilder:
    """A scene under construction for one item.

    Args:
        config: The world config.
        rng: This item's random generator (the only source of randomness).
        ood: None for train/test_iid; the kind of shift for a test_ood item.
    """

    def __init__(self, config: WorldConfig, rng: np.random.Generator, ood: OodKind | None):
        self.config = config
        self.rng = rng
        self.ood = ood
        self.scene = Scene(rows=config.grid[0], cols=config.grid[1])
        held = set(config.held_out_cells) if config.layout_held_out else set()
        self.held_out_cells = [c for c in self.scene.cells() if c in held]
        self.train_cells = [c for c in self.scene.cells() if c not in held]
        self.held_out_pairs = set(config.held_out_pairs)

    # randomness ----------------------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choose(self, options: Sequence[T]) -> T:
        if not options:
            raise Retry("nothing to choose from")
        return options[int(self.rng.integers(len(options)))]

    def between(self, lo_hi: tuple[int, int]) -> int:
        return int(self.rng.integers(lo_hi[0], lo_hi[1] + 1))

    # constraints ---------------------------------------------------------------------------
    def cells_for(self, kind_name: str, key: bool) -> list[Cell]:
        """Cells a placement may use: held-out cells only for the key of a layout item."""
        if key and self.ood == "layout" and self.held_out_cells:
            return list(self.held_out_cells)
        if is_major(kind_name):
            return list(self.train_cells)
        return list(self.scene.cells())

    def pair_allowed(self, anchor: str, item: str, key: bool = False) -> bool:
        """Held-out pairs appear only as the key composition of a test_ood item."""
        if (anchor, item) not in self.held_out_pairs:
            return True
        return key and self.ood == "composition"

    def _free(self, cell: Cell, layer: str) -> bool:
        s = self.scene
        if layer == "anchor":
            return s.is_empty(cell)
        if layer == "robot":
            return s.anchor(cell) is None and s.item(cell) is None and s.robot_cell != cell
        return s.anchor(cell) is None and s.item(cell) is None and s.robot_cell != cell

    def _pick(
        self, kind_name: str, key: bool, avoid: Iterable[Cell], only: Iterable[Cell] | None
    ) -> Cell:
        layer = KINDS[kind_name].layer
        allowed = self.cells_for(kind_name, key)
        if only is not None:
            only_set = set(only)
            allowed = [c for c in allowed if c in only_set]
        avoid_set = set(avoid)
        free = [c for c in allowed if c not in avoid_set and self._free(c, layer)]
        return self.choose(free)

    # placement -----------------------------------------------------------------------------
    def anchor(
        self,
        kind_name: str,
        on: bool = False,
        key: bool = False,
        avoid: Iterable[Cell] = (),
        only: Iterable[Cell] | None = None,
    ) -> Cell:
        """Place an anchor in an empty cell; returns its cell."""
        cell = self._pick(kind_name, key, avoid, only)
        self.scene.add(Obj(kind_name, cell, on))
        return cell

    def on_anchor(self, cell: Cell, item: str, key: bool = False) -> None:
        """Put an item on the anchor in `cell` (the pair must be allowed in this split)."""
        anchor = self.scene.anchor(cell)
        if anchor is None:
            raise ValueError(f"no anchor in {cell}")
        if not self.pair_allowed(anchor.kind, item, key):
            raise ValueError(f"({anchor.kind}, {item}) is held out in this split")
        self.scene.add(Obj(item, cell))

    def floor(
        self,
        kind_name: str,
        key: bool = False,
        avoid: Iterable[Cell] = (),
        only: Iterable[Cell] | None = None,
    ) -> Cell:
        """Put an item on the floor of a free cell; returns its cell."""
        cell = self._pick(kind_name, key, avoid, only)
        self.scene.add(Obj(kind_name, cell))
        return cell

    def elsewhere(self, item: str, avoid: Iterable[Cell] = ()) -> Cell:
        """Put an item away from the action: on the floor or, half the time, on a table."""
        if self.chance(0.5) and item not in FLOOR_ONLY:
            tables = [o.cell for o in self.scene.find("table")
                      if self.scene.item(o.cell) is None and o.cell not in set(avoid)]
            cell = self.choose(tables) if tables else self.anchor("table", avoid=avoid)
            self.scene.add(Obj(item, cell))
            return cell
        return self.floor(item, avoid=avoid)

    def robot(
        self, key: bool = False, avoid: Iterable[Cell] = (), only: Iterable[Cell] | None = None
    ) -> Cell:
        cell = self._pick("robot", key, avoid, only)
        self.scene.add(Obj("robot", cell))
        return cell

    def into_robot_cell(self, item: str) -> None:
        """Put an item in the robot's own cell, just in front of it."""
        cell = self.scene.robot_cell
        if cell is None or self.scene.item(cell) is not None:
            raise Retry("robot cell unavailable")
        self.scene.add(Obj(item, cell))

    def allowed_items(self, anchor: str, items: Sequence[str], key: bool = False) -> list[str]:
        return [i for i in items if self.pair_allowed(anchor, i, key)]

    def near(self, cell: Cell) -> list[Cell]:
        """`cell` and its neighbours: where hazard look-alikes must not lie to stay harmless."""
        return [cell, *self.scene.neighbours(cell)]
