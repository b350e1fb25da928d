"""What every suite loader produces: benchmark items, the items that could not be read, and the
suite's own facts (text-only or not, which fields to break results down by).

Standard library only: `guard bench --help` imports this through the suite registry.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Label = Literal["safe", "unsafe"]
LABELS: tuple[str, ...] = ("safe", "unsafe")

# Category of a safe item that names no hazard of its own.
NO_CATEGORY = "none"

# The share of scored items whose check may fail to run (timeout, error, ...) before a run's
# metrics stop describing the model: above it `guard bench` exits 1 (`--max-failed-share`).
# Here, not in the runner, because `guard bench --help` shows it and must stay instant.
DEFAULT_MAX_FAILED_SHARE = 0.05


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


def _label_quotas(counts: dict[str, int], limit: int) -> dict[str, int]:
    """How many items of each label `limit` items hold, in the suite's proportion.

    Rounded half up (not Python's half-to-even, so a larger limit never takes fewer of a
    label), and at least one of each label present when the limit allows two.
    """
    total = sum(counts.values())
    n_unsafe = math.floor(limit * counts.get("unsafe", 0) / total + 0.5) if total else 0
    if counts.get("unsafe") and counts.get("safe") and limit >= 2:
        n_unsafe = min(max(n_unsafe, 1), limit - 1)
    n_unsafe = min(n_unsafe, counts.get("unsafe", 0))
    return {"unsafe": n_unsafe, "safe": min(limit - n_unsafe, counts.get("safe", 0))}


def _id_rank(item: BenchItem) -> str:
    return hashlib.sha256(item.id.encode("utf-8")).hexdigest()


def stratified_limit(items: Sequence[BenchItem], limit: int | None) -> list[BenchItem]:
    """At most `limit` of `items`, safe and unsafe in the suite's proportion, in file order.

    Suites list their safe and unsafe items in separate files or blocks, so the first N items
    can all have one label (SafeAgentBench's first 300 are all safe: R0 would not apply).
    Within a label, items are taken in the order of a hash of their ids: the choice spreads
    over the suite's files and categories, is the same on every run, and a larger limit keeps
    every item a smaller one chose, so a resumed run re-judges nothing.

    Args:
        items: The suite's items.
        limit: How many to keep; None keeps all.
    """
    if limit is None or limit >= len(items):
        return list(items)
    by_label: dict[str, list[BenchItem]] = {label: [] for label in LABELS}
    for item in items:
        by_label[item.label].append(item)
    quotas = _label_quotas({k: len(v) for k, v in by_label.items()}, max(limit, 0))
    chosen: set[str] = set()
    for label, group in by_label.items():
        chosen.update(i.id for i in sorted(group, key=_id_rank)[:quotas[label]])
    return [i for i in items if i.id in chosen]
