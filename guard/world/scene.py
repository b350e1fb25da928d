"""A scene: what stands in which cell of the top-down grid, and in which state.

Scenes are plain data. Rules read them (`guard.world.rules`), the renderer draws them
(`guard.world.drawing`), and they serialise to the compact JSON kept in each item's `scene`
field, so an item can be re-judged or re-drawn without the generator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from guard.world.catalog import FLOOR_ONLY, KINDS, Layer, has, kind

Cell = tuple[int, int]


@dataclass(frozen=True)
class Obj:
    """One object in a cell.

    Attributes:
        kind: A name from `guard.world.catalog.KINDS`.
        cell: (row, col); row 0 is the top of the image, the robot faces row 0 ("forward").
        on: Switched on (only for kinds with state: burners glow).
    """

    kind: str
    cell: Cell
    on: bool = False

    @property
    def layer(self) -> Layer:
        return KINDS[self.kind].layer

    @property
    def noun(self) -> str:
        return KINDS[self.kind].noun

    @property
    def short(self) -> str:
        return KINDS[self.kind].short

    def has(self, prop: str) -> bool:
        return has(self.kind, prop)


@dataclass
class Scene:
    """A grid of cells, each holding at most one anchor, one item and the robot.

    Attributes:
        rows: Grid rows.
        cols: Grid columns.
        objects: Everything in the scene, in drawing order within each layer.
    """

    rows: int = 4
    cols: int = 4
    objects: list[Obj] = field(default_factory=list)

    # construction -------------------------------------------------------------------------
    @classmethod
    def of(cls, *objs: tuple[Any, ...] | Obj, grid: tuple[int, int] = (4, 4)) -> Scene:
        """A scene from short tuples, for tests and examples.

        Args:
            *objs: `Obj`s or tuples `(kind, row, col)` / `(kind, row, col, on)`.
            grid: (rows, cols).

        Returns:
            The validated scene.

        Example:
            `Scene.of(("stove", 0, 1), ("towel", 0, 1))` is a towel lying on a cold stove.
        """
        scene = cls(rows=grid[0], cols=grid[1])
        for o in objs:
            scene.add(o if isinstance(o, Obj) else Obj(o[0], (o[1], o[2]), *o[3:]))
        return scene

    def add(self, obj: Obj) -> Obj:
        """Add `obj`, checking the cell is inside the grid and its layer is free."""
        kind(obj.kind)  # unknown kinds fail here, with the list of known ones
        r, c = obj.cell
        if not (0 <= r < self.rows and 0 <= c < self.cols):
            raise ValueError(
                f"{obj.kind} at {obj.cell} is outside the {self.rows}x{self.cols} grid"
            )
        if self.at(obj.cell, obj.layer) is not None:
            raise ValueError(f"cell {obj.cell} already holds a {obj.layer}")
        if obj.layer == "item" and obj.kind in FLOOR_ONLY and self.anchor(obj.cell) is not None:
            raise ValueError(f"{obj.kind} cannot stand on an anchor (cell {obj.cell})")
        if obj.layer == "anchor" and (it := self.item(obj.cell)) and it.kind in FLOOR_ONLY:
            raise ValueError(f"cell {obj.cell} holds {it.kind}, which stands on the floor")
        if obj.layer == "robot" and self.anchor(obj.cell) is not None:
            raise ValueError(f"the robot cannot stand on an anchor (cell {obj.cell})")
        if obj.layer == "anchor" and self.robot_cell == obj.cell:
            raise ValueError(f"cell {obj.cell} holds the robot")
        self.objects.append(obj)
        return obj

    # queries --------------------------------------------------------------------------------
    def at(self, cell: Cell, layer: Layer) -> Obj | None:
        """The object of `layer` in `cell`, if any."""
        for o in self.objects:
            if o.cell == cell and o.layer == layer:
                return o
        return None

    def anchor(self, cell: Cell) -> Obj | None:
        return self.at(cell, "anchor")

    def item(self, cell: Cell) -> Obj | None:
        return self.at(cell, "item")

    @property
    def robot_cell(self) -> Cell | None:
        for o in self.objects:
            if o.layer == "robot":
                return o.cell
        return None

    def find(self, kind_name: str) -> list[Obj]:
        """All objects of one kind."""
        return [o for o in self.objects if o.kind == kind_name]

    def with_prop(self, prop: str, layer: Layer | None = None) -> list[Obj]:
        """All objects with a property (optionally of one layer)."""
        return [o for o in self.objects if o.has(prop) and (layer is None or o.layer == layer)]

    def cells(self) -> Iterator[Cell]:
        for r in range(self.rows):
            for c in range(self.cols):
                yield (r, c)

    def neighbours(self, cell: Cell) -> list[Cell]:
        """The up-to-four cells sharing an edge with `cell`."""
        r, c = cell
        out = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
        return [(a, b) for a, b in out if 0 <= a < self.rows and 0 <= b < self.cols]

    def is_empty(self, cell: Cell) -> bool:
        return all(o.cell != cell for o in self.objects)

    def pairs(self) -> Iterable[tuple[str, str]]:
        """(anchor, item) kinds of every item lying on an anchor."""
        for o in self.objects:
            if o.layer == "anchor" and (it := self.item(o.cell)) is not None:
                yield (o.kind, it.kind)

    # serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Compact, stable form: `{"grid": [r, c], "objects": [{"kind", "cell", "on"?}]}`."""
        objs = []
        for o in self.objects:
            d: dict[str, Any] = {"kind": o.kind, "cell": [o.cell[0], o.cell[1]]}
            if KINDS[o.kind].has_state:
                d["on"] = o.on
            objs.append(d)
        return {"grid": [self.rows, self.cols], "objects": objs}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        rows, cols = d["grid"]
        scene = cls(rows=int(rows), cols=int(cols))
        for o in d["objects"]:
            scene.add(Obj(o["kind"], (int(o["cell"][0]), int(o["cell"][1])), bool(o.get("on"))))
        return scene

    @classmethod
    def from_json(cls, text: str) -> Scene:
        return cls.from_dict(json.loads(text))
