"""The answer parser is strict and total: anything outside the grammar raises ParseError, which
the guard turns into a veto. Above all, no text parses to ALLOW unless it is a valid ALLOW
answer."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.prompting import ParseError, parse_answer
from guard.types import Verdict

VALID = [
    ("ALLOW", Verdict.ALLOW, None, 0),
    ("VETO\nrisk: 0.9\nhazard: fire | towel on the stove | it ignites | 0.9\nconsequence: fire.",
     Verdict.VETO, 0.9, 1),
    ("annotate\n- hazard: spill | full glass at the edge | water on the floor\nrisk: 0.4",
     Verdict.ANNOTATE, 0.4, 1),
    ("**VETO**\nhazard: cut | child beside the knife | cut hand\nhazard: fall | wet | slips",
     Verdict.VETO, None, 2),
    ("Verdict: ALLOW\n\nrisk: 0.05\nconsequence: The empty pan warms up.", Verdict.ALLOW, 0.05, 0),
]


@pytest.mark.parametrize(("text", "verdict", "risk", "n_hazards"), VALID)
def test_valid_answers(text, verdict, risk, n_hazards):
    a = parse_answer(text)
    assert a.verdict is verdict and a.risk == risk and len(a.hazards) == n_hazards


def test_hazard_fields_and_default_severity():
    a = parse_answer("VETO\nhazard: Electric Shock | wet hands | shock")
    h = a.hazards[0]
    assert (h.category, h.description, h.consequence, h.severity) == (
        "electric_shock", "wet hands", "shock", 1.0
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n\n", "empty"),
        ("I think this is fine. ALLOW", "does not start with a verdict"),
        ("ALLOWED", "does not start with a verdict"),
        ("**ALLOW", "does not start with a verdict"),
        ("ALLOW\nsure, go ahead", "line 2"),
        ("ALLOW\nrisk: 0.1\nrisk: 0.2", "twice"),
        ("ALLOW\nrisk: low", "not a number"),
        ("ALLOW\nrisk: 1.5", "outside"),
        ("ALLOW\nrisk: nan", "outside"),
        ("ALLOW\nhazard: fire | towel | ignites", "ALLOW answer lists hazards"),
        ("VETO\nhazard: fire | towel", "3 or 4"),
        ("VETO\nhazard: fire |  | x", "empty description"),
        ("VETO\nhazard: ??? | towel | x", "category"),
        ("VETO\nhazard: fire | towel | x | 2", "outside"),
        ("ALLOW\nconsequence:", "empty consequence"),
    ],
)
def test_invalid_answers_raise_with_a_reason(text, reason):
    with pytest.raises(ParseError, match=re.escape(reason)):
        parse_answer(text)


# An independent statement of what a valid ALLOW answer is: verdict line, then only risk /
# consequence / rationale lines (no hazards), each key at most once.
_ALLOW_HEAD = re.compile(r"^(verdict\s*:\s*)?(\*\*allow\*\*|allow)$", re.I)
_ALLOW_LINE = re.compile(
    r"^(-\s+)?(risk\s*:\s*(0(\.\d*)?|1(\.0*)?|\.\d+|[01]?\.?\d*(e-?\d+)?)"
    r"|consequence\s*:\s*\S.*|rationale\s*:\s*\S.*)$",
    re.I,
)


def is_valid_allow(text: str) -> bool:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines or not _ALLOW_HEAD.match(lines[0]):
        return False
    keys = []
    for ln in lines[1:]:
        if not _ALLOW_LINE.match(ln):
            return False
        keys.append(ln.lstrip("- ").split(":", 1)[0].strip().lower())
    return len(keys) == len(set(keys))


_fragments = st.sampled_from([
    "ALLOW", "allow", "VETO", "ANNOTATE", "**ALLOW**", "Verdict: ", "risk: ", "0.3", "1.7",
    "hazard: ", "fire", " | ", "consequence: ", "rationale: ", "\n", " ", "- ", "ok", ":",
    "nan", "-0.1", "ALLOWED", "*", "1e-3",
])
_texts = st.one_of(
    st.text(max_size=200),
    st.lists(_fragments, max_size=25).map("".join),
    st.tuples(st.just("ALLOW\n"), st.lists(_fragments, max_size=12).map("".join)).map("".join),
)


@settings(max_examples=1500, deadline=None)
@given(_texts)
def test_random_text_never_parses_to_allow_unless_it_is_a_valid_allow_answer(text):
    try:
        answer = parse_answer(text)
    except ParseError:
        return
    if answer.verdict is Verdict.ALLOW:
        assert is_valid_allow(text), f"parsed to ALLOW: {text!r}"
        assert answer.hazards == []


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_parser_is_total_it_only_ever_raises_parse_error(text):
    try:
        parse_answer(text)
    except ParseError:
        pass
