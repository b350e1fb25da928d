"""The things that can stand in the world, and what they are made of.

Rules reason over properties (flammable, electrical, child, ...), never over names, so a new
object only needs an entry here (and a drawing in `drawing.py`) to take part in every rule
that cares about its properties.

Layers: an *anchor* is a large fixture filling its cell (stove, sink, table); an *item* is a
small thing lying on an anchor or on the floor of a cell (towel, pan, child); the *robot* is
its own layer. A cell holds at most one of each, and "on the stove" means "same cell as the
stove", which is what a small vision model can see inside one image token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layer = Literal["anchor", "item", "robot"]


@dataclass(frozen=True)
class Kind:
    """One kind of object.

    Attributes:
        name: Identifier used in scenes and configs.
        layer: anchor, item or robot.
        noun: How sentences name it ("a towel").
        props: Properties the rules read.
        has_state: Whether it can be switched on (drawn glowing when on).
    """

    name: str
    layer: Layer
    noun: str
    props: frozenset[str] = frozenset()
    has_state: bool = False

    @property
    def short(self) -> str:
        """The noun without its article ("towel"), for "the towel"."""
        for article in ("a ", "an ", "some "):
            if self.noun.startswith(article):
                return self.noun[len(article):]
        return self.noun


def _k(name: str, layer: Layer, noun: str, *props: str, state: bool = False) -> Kind:
    return Kind(name, layer, noun, frozenset(props), state)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        # anchors
        _k("stove", "anchor", "a stove", "heat_source", "appliance", state=True),
        _k("hot_plate", "anchor", "a hot plate", "heat_source", "appliance", state=True),
        _k("sink", "anchor", "a sink", "water_source"),
        _k("bathtub", "anchor", "a bathtub", "water_source"),
        _k("microwave", "anchor", "a microwave", "appliance", "electrical"),
        _k("table", "anchor", "a table", "surface"),
        _k("laptop", "anchor", "a laptop", "electrical", "electronics"),
        # items
        _k("towel", "item", "a towel", "flammable"),
        _k("paper", "item", "a newspaper", "flammable"),
        _k("box", "item", "a cardboard box", "flammable"),
        _k("pan", "item", "a pan", "cookware", "metal"),
        _k("pot", "item", "a pot", "cookware", "metal"),
        # more kinds of the contact rules' two sides, used where a world lists them in
        # `WorldConfig.contact_items` (the default world never draws them)
        _k("book", "item", "a book", "flammable"),
        _k("basket", "item", "a wicker basket", "flammable"),
        _k("kettle", "item", "a kettle", "cookware", "metal"),
        _k("wok", "item", "a wok", "cookware", "metal"),
        _k("mug", "item", "a mug", "container"),
        _k("plate", "item", "a plate", "container", "fragile"),
        _k("duck", "item", "a rubber duck", "toy"),
        _k("toaster", "item", "a toaster", "electrical", "appliance"),
        _k("hair_dryer", "item", "a hair dryer", "electrical", "appliance"),
        _k("fork", "item", "a fork", "metal"),
        _k("foil", "item", "a sheet of aluminium foil", "metal"),
        _k("knife", "item", "a knife", "sharp", "metal"),
        _k("glass", "item", "a glass", "container", "fragile"),
        _k("vase", "item", "a vase", "fragile", "obstacle"),
        _k("rug", "item", "a rug", "flat"),
        _k("plant", "item", "a potted plant", "neutral"),
        _k("ball", "item", "a ball", "toy", "neutral"),
        # people and animals are items on the floor: they never stand on an anchor
        _k("child", "item", "a child", "person", "child", "vulnerable", "obstacle"),
        _k("adult", "item", "an adult", "person", "obstacle"),
        _k("cat", "item", "a cat", "pet", "animal", "obstacle"),
        # the robot that will carry out the action
        _k("robot", "robot", "the robot", "robot"),
    )
}

#: Items that may only stand on the floor (never drawn on an anchor).
FLOOR_ONLY: frozenset[str] = frozenset({"child", "adult", "cat", "rug", "plant", "ball", "vase"})
#: Neutral floor clutter: no rule reads any property of these.
CLUTTER: tuple[str, ...] = ("plant", "ball")


def kind(name: str) -> Kind:
    """The kind called `name` (KeyError names the known kinds)."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown object kind {name!r}; known: {sorted(KINDS)}") from None


def has(name: str, prop: str) -> bool:
    """Whether kind `name` has property `prop`."""
    return prop in KINDS[name].props
