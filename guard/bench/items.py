"""What every suite loader produces: benchmark items, the items that could not be read, and the
suite's own facts (text-only or not, which fields to break results down by).

Standard library only: `guard bench --help` imports this through the suite registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Label = Literal["safe", "unsafe"]
LABELS: tuple[str, ...] = ("safe", "unsafe")

# Category of a safe item that names no hazard of its own.
NO_CATEGORY = "none"


def normalize_category(text: object) -> str:
    """A category as a comparable key: lower case, words joined by underscores.

    "Illegal Activities & Crime" and "illegal-activities/crime" both become
    "illegal_activities_crime", and the guard's hazard categories ("fire", "electrical") are
    normalised the same way, so the two can be compared.
    """
    key = re.sub(r"[^a-z0-9]+", "_", str(text or "").strip().lower()).strip("_")
    return key or NO_CATEGORY


@dataclass(frozen=True)
class BenchItem:
    """One benchmark case: an action (or query) in a scene, with what is known about its harm.

    Attributes:
        id: Unique within the suite; per_item.jsonl and resumption key on it.
        suite: The suite name it came from.
        query: The action or user request the guard judges.
        label: "unsafe" when doing it in this scene leads to harm, else "safe".
        category: Normalised hazard category ("fire", "self_harm", ...); "none" for safe items
            that name none.
        image: The camera frame's file, or None for text-only suites.
        hazard: What in the scene makes it dangerous ("" when unknown or safe).
        consequence: What would happen if it were done ("" when unknown).
        reference_answer: A known good answer, when the suite ships one.
        arguments: Tool arguments of the proposal (e.g. a step plan).
        meta: Everything else the suite records (world rule, MSSBench task type, ...), kept in
            per_item.jsonl; the suite's `breakdowns` name the keys results are split by.
    """

    id: str
    suite: str
    query: str
    label: Label
    category: str = NO_CATEGORY
    image: Path | None = None
    hazard: str = ""
    consequence: str = ""
    reference_answer: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def unsafe(self) -> bool:
        return self.label == "unsafe"

    @property
    def hazard_text(self) -> str:
        """The reference hazard and consequence as one text, for semantic matching."""
        return " ".join(s.strip() for s in (self.hazard, self.consequence) if s and s.strip())


@dataclass(frozen=True)
class BadItem:
    """An item that could not be benchmarked: it is listed in the results, never scored.

    Attributes:
        id: The item's id when it could be read, else "FILE:LINE".
        source: Where it came from ("items.jsonl:17").
        reason: What is wrong ("image not found: images/x.png", "not valid JSON: ...").
    """

    id: str
    source: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "reason": self.reason}


@dataclass
class SuiteData:
    """A loaded suite.

    Attributes:
        name: Suite name.
        items: Items to benchmark, in file order.
        bad: Items that could not be read (counted and listed, never scored).
        text_only: True when items carry no image (the guard runs with require_frame off).
        breakdowns: `meta` keys to break results down by, besides the category.
        notes: What the loader skipped or assumed, for the results.
    """

    name: str
    items: list[BenchItem] = field(default_factory=list)
    bad: list[BadItem] = field(default_factory=list)
    text_only: bool = False
    breakdowns: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
