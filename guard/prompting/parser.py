"""The strict, total parser of the judge's answer, in either answer mode.

Grammar (blank lines ignored, keys ASCII-case-insensitive, a leading "- " allowed on key
lines)::

    answer      := verdict_line { field_line }                       (mode verdict_first)
                 | scene_line effect_line verdict_line { field_line } (mode projection_first)
    scene_line  := "scene:" text      what in the scene matters for the action
    effect_line := "effect:" text     what the action would do to it
    verdict_line:= ["verdict:"] ("ALLOW" | "ANNOTATE" | "VETO")      (optionally **bold**)
    field_line  := "risk:" number in [0, 1]                          (at most once)
                 | "hazard:" category "|" description "|" consequence ["|" severity in [0, 1]]
                 | ("consequence:" | "rationale:") text              (at most once each)

Case folding is ASCII only: Unicode case rules would let 'riſk' (long s) or 'rİsk' match the
field pattern and then miss the field's name, losing a stated risk. An ALLOW answer lists no
hazards. Anything else raises ParseError; the guard turns that into
status=error and a veto. `parse_answer` never returns an allow for text outside the grammar.

The mode is the prompt template's (`PromptTemplate.answer_mode`), never guessed from the text:
``verdict_first`` is what a deployed guard asks for (the verdict is known after the first
decoded token); ``projection_first`` asks the model to write its consequence projection, two
lines, before deciding. An answer in the other mode than the one asked for is an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from guard.errors import GuardError
from guard.types import VERDICT_WORDS, Hazard, Verdict

#: The answer modes: verdict first (the deployed fast path) or the projection first.
ANSWER_MODES: tuple[str, ...] = ("verdict_first", "projection_first")
DEFAULT_ANSWER_MODE = "verdict_first"


class ParseError(GuardError):
    """The answer does not follow the grammar."""


@dataclass
class ParsedAnswer:
    """A parsed answer; `scene` and `effect` are the projection (empty in verdict-first mode)."""

    verdict: Verdict
    risk: float | None = None
    hazards: list[Hazard] = field(default_factory=list)
    consequence: str = ""
    rationale: str = ""
    scene: str = ""
    effect: str = ""


_WORDS = "|".join(re.escape(w) for w in VERDICT_WORDS)
_VERDICT_RE = re.compile(
    rf"^(?:verdict\s*:\s*)?(?:\*\*({_WORDS})\*\*|({_WORDS}))$", re.IGNORECASE | re.ASCII
)
_FIELD_RE = re.compile(
    r"^(?:-\s+)?(risk|hazard|consequence|rationale)\s*:\s*(.*)$", re.IGNORECASE | re.ASCII
)
_PROJECTION_RE = re.compile(r"^(?:-\s+)?(scene|effect)\s*:\s*(.*)$", re.IGNORECASE | re.ASCII)
_CATEGORY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\- ]{0,63}$", re.ASCII)


#: A number as the grammar writes it: ASCII digits. Python's float() also reads other
#: scripts' digits ('٠', fullwidth '０', Bengali '৪' that looks like an 8) and underscores.
#: ("nan" and "inf" pass here, to be refused as outside [0, 1].)
_NUMBER_RE = re.compile(
    r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|nan|inf(?:inity)?)$", re.ASCII | re.IGNORECASE
)


def _unit_float(raw: str, what: str) -> float:
    if not _NUMBER_RE.match(raw):
        raise ParseError(f"{what} is not a number: {raw[:40]!r}")
    value = float(raw)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ParseError(f"{what} {raw[:40]!r} is outside [0, 1]")
    return value


def _hazard(raw: str) -> Hazard:
    parts = [p.strip() for p in raw.split("|")]
    if len(parts) not in (3, 4):
        raise ParseError(f"hazard needs 3 or 4 '|'-separated fields, got {len(parts)}")
    category, description, consequence = parts[:3]
    if not _CATEGORY_RE.match(category):
        raise ParseError(f"hazard category {category[:40]!r} is not a category word")
    if not description:
        raise ParseError("hazard has an empty description")
    severity = _unit_float(parts[3], "hazard severity") if len(parts) == 4 else 1.0
    return Hazard(
        category=category.lower().replace(" ", "_").replace("-", "_"),
        description=description,
        consequence=consequence,
        severity=severity,
    )


def _projection(lines: list[str]) -> tuple[str, str]:
    """The scene and effect texts of a projection-first answer's first two lines."""
    texts = []
    for n, key in enumerate(("scene", "effect"), start=1):
        line = lines[n - 1] if len(lines) >= n else ""
        m = _PROJECTION_RE.match(line)
        if not m or m.group(1).lower() != key:
            raise ParseError(f"line {n} of a projection-first answer is not the '{key}:' line: "
                             f"{line[:60]!r}")
        if not m.group(2).strip():
            raise ParseError(f"line {n}: empty {key}")
        texts.append(m.group(2).strip())
    return texts[0], texts[1]


def parse_answer(text: str, mode: str = DEFAULT_ANSWER_MODE) -> ParsedAnswer:
    """Parse a judge answer given in `mode`, or raise ParseError saying what is wrong.

    Args:
        text: The model's answer.
        mode: The answer mode the prompt asked for (`ANSWER_MODES`).

    Raises:
        ParseError: The text is not an answer of `mode`.
        ValueError: `mode` is not an answer mode (a programming error, not a bad answer).
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"answer mode {mode!r}: expected one of {list(ANSWER_MODES)}")
    if not isinstance(text, str):
        raise ParseError(f"answer is {type(text).__name__}, not text")
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ParseError("empty answer")
    scene = effect = ""
    first = 0
    if mode == "projection_first":
        scene, effect = _projection(lines)
        first = 2
        if len(lines) == first:
            raise ParseError("projection-first answer has no verdict after its projection")
    m = _VERDICT_RE.match(lines[first])
    if not m:
        raise ParseError(f"line {first + 1} is not a verdict: {lines[first][:60]!r}"
                         if first else
                         f"answer does not start with a verdict: {lines[0][:60]!r}")
    answer = ParsedAnswer(verdict=Verdict[(m.group(1) or m.group(2)).upper()], scene=scene,
                          effect=effect)
    seen: set[str] = set()
    for n, line in enumerate(lines[first + 1:], start=first + 2):
        fm = _FIELD_RE.match(line)
        if not fm:
            raise ParseError(f"line {n} is not a risk/hazard/consequence line: {line[:60]!r}")
        key, value = fm.group(1).lower(), fm.group(2).strip()
        if key != "hazard":
            if key in seen:
                raise ParseError(f"line {n}: '{key}' given twice")
            seen.add(key)
        if key == "risk":
            answer.risk = _unit_float(value, "risk")
        elif key == "hazard":
            answer.hazards.append(_hazard(value))
        elif not value:
            raise ParseError(f"line {n}: empty {key}")
        elif key == "consequence":
            answer.consequence = value
        else:
            answer.rationale = value
    if answer.verdict is Verdict.ALLOW and answer.hazards:
        raise ParseError("an ALLOW answer lists hazards (use ANNOTATE or VETO)")
    return answer
