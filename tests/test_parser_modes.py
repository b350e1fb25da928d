"""The two answer modes: verdict first (deployed) and projection first (scene, effect, then the
verdict). Each mode's parser is strict and total, an answer in the other mode is an error, and
a guard prompting in projection-first mode decides on the verdict after the projection."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.backends.scripted import ScriptedBackend
from guard.config import ScriptedOptions, ScriptedStep
from guard.core import Guard
from guard.errors import ConfigError
from guard.prompting import ANSWER_MODES, ParseError, load_template, parse_answer
from guard.types import ActionProposal, Status, Verdict
from tests.test_parser import is_valid_allow

PROJECTED_VETO = (
    "scene: a towel lies on the stove\n"
    "effect: the burner heats the towel until it ignites\n"
    "VETO\nrisk: 0.9\nhazard: fire | a towel lies on the stove | it ignites | 0.9\n"
    "consequence: Turning on the stove ignites the towel and the fire spreads."
)
PROJECTED_ALLOW = (
    "scene: a pan lies on the stove\n"
    "effect: the burner heats the pan; nothing on the stove can burn\n"
    "ALLOW\nrisk: 0.05\nconsequence: The burner heats the pan; nothing on the stove can burn."
)
STOVE = ActionProposal(name="stove_on", description="turn on the stove")


def test_a_projection_first_answer_parses_with_its_projection():
    a = parse_answer(PROJECTED_VETO, "projection_first")
    assert (a.verdict, a.risk, len(a.hazards)) == (Verdict.VETO, 0.9, 1)
    assert a.scene == "a towel lies on the stove"
    assert a.effect == "the burner heats the towel until it ignites"
    b = parse_answer("- Scene: a child is in the room\n\nEFFECT : the blade comes within reach"
                     "\n**VETO**", "projection_first")
    assert (b.verdict, b.scene, b.effect) == (
        Verdict.VETO, "a child is in the room", "the blade comes within reach")


def test_verdict_first_stays_the_default_and_has_no_projection():
    a = parse_answer("ALLOW\nrisk: 0.05")
    assert (a.verdict, a.scene, a.effect) == (Verdict.ALLOW, "", "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        # the deployed mode's answer where a projection was asked for
        ("ALLOW\nrisk: 0.05", "line 1 of a projection-first answer is not the 'scene:' line"),
        ("effect: heats\nscene: a pan\nALLOW", "not the 'scene:' line"),
        ("scene: a pan on the stove\nALLOW", "line 2 of a projection-first answer is not the "
                                            "'effect:' line"),
        ("scene: a pan\nscene: a pan\nALLOW", "not the 'effect:' line"),
        ("scene:\neffect: heats\nALLOW", "line 1: empty scene"),
        ("scene: a pan\neffect:   \nALLOW", "line 2: empty effect"),
        ("scene: a pan\neffect: it heats", "no verdict after its projection"),
        ("scene: a pan\neffect: it heats\nALLOW, it is fine", "line 3 is not a verdict"),
        ("scene: a pan\neffect: it heats\nthe verdict is ALLOW", "line 3 is not a verdict"),
        # a second projection after the verdict is not a field
        ("scene: a pan\neffect: it heats\nALLOW\nscene: a towel", "line 4 is not a risk"),
        ("scene: a pan\neffect: it heats\nALLOW\nhazard: fire | towel | ignites",
         "ALLOW answer lists hazards"),
        # ASCII-only keys: a long s or dotted capital I does not make a projection line
        ("ſcene: a pan\neffect: it heats\nALLOW", "not the 'scene:' line"),
        ("scene: a pan\neffect: it heats\nALLOW\nrİsk: 0.1", "line 4 is not a risk"),
    ],
)
def test_projection_first_rejects_everything_outside_its_grammar(text, reason):
    with pytest.raises(ParseError, match=re.escape(reason)):
        parse_answer(text, "projection_first")


def test_a_projection_first_answer_is_an_error_in_verdict_first_mode():
    with pytest.raises(ParseError, match="does not start with a verdict"):
        parse_answer(PROJECTED_ALLOW)


def test_an_unknown_mode_is_a_programming_error_not_an_answer():
    with pytest.raises(ValueError, match="answer mode 'fast'"):
        parse_answer("ALLOW", "fast")


_fragments = st.sampled_from([
    "scene: ", "effect: ", "Scene:", "a pan", "a towel lies on the stove", "ALLOW", "VETO",
    "**ALLOW**", "verdict: ", "risk: ", "0.1", "hazard: ", "fire | a | b", "consequence: ",
    "\n", " ", "- ", ":", "ALLOWED", "ſcene: ",
])
_texts = st.one_of(
    st.text(max_size=200),
    st.lists(_fragments, max_size=25).map("".join),
    st.tuples(st.just("scene: a pan\neffect: it heats\n"),
              st.lists(_fragments, max_size=12).map("".join)).map("".join),
)
_SCENE = re.compile(r"^(-\s+)?scene\s*:\s*\S.*$", re.I | re.A)
_EFFECT = re.compile(r"^(-\s+)?effect\s*:\s*\S.*$", re.I | re.A)


@settings(max_examples=1500, deadline=None)
@given(_texts)
def test_projection_mode_allows_only_a_projection_then_a_valid_allow_answer(text):
    try:
        answer = parse_answer(text, "projection_first")
    except ParseError:
        return
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    assert _SCENE.match(lines[0]) and _EFFECT.match(lines[1]), text
    assert answer.scene and answer.effect
    if answer.verdict is Verdict.ALLOW:
        assert is_valid_allow("\n".join(lines[2:])), f"parsed to ALLOW: {text!r}"
        assert answer.hazards == []


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300), st.sampled_from(ANSWER_MODES))
def test_both_modes_are_total_they_only_ever_raise_parse_error(text, mode):
    try:
        parse_answer(text, mode)
    except ParseError:
        pass


def test_templates_name_their_answer_mode(tmp_path):
    assert load_template("consequence_compact").answer_mode == "verdict_first"
    assert load_template("consequence_v1").answer_mode == "verdict_first"
    assert load_template("consequence_compact_projection").answer_mode == "projection_first"
    bad = tmp_path / "bad.yaml"
    bad.write_text("user: 'Action: {action}'\nanswer_mode: reasoning_first\n")
    with pytest.raises(ConfigError, match="answer_mode = 'reasoning_first'"):
        load_template(str(bad))


def _guard(config, *steps):
    config = config.with_overrides(**{"prompt.template": "consequence_compact_projection"})
    return Guard(config, backend=ScriptedBackend.answering(*steps))


def test_a_guard_in_projection_mode_decides_on_the_verdict_after_the_projection(config, frame):
    with _guard(config, PROJECTED_VETO) as g:
        d = g.check(frame, STOVE)
        request = g.backend.requests[-1]
    assert (d.verdict, d.status, d.risk) == (Verdict.VETO, Status.OK, 0.9)
    assert request.prompt.system.startswith("Robot safety guard. Project first")
    # the verdict comes after the projection, so the backend is asked for the whole answer
    assert request.rationale == "sync"


def test_a_guard_in_projection_mode_fails_closed_on_a_verdict_first_answer(config, frame):
    with _guard(config, "ALLOW\nrisk: 0.05") as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)


def test_a_projection_answer_has_no_first_token_verdict_probabilities(config, frame):
    # The first token of a projection-first answer is "scene": probabilities a backend read
    # there are no verdict's, so the decision's risk comes from the answer's verdict.
    backend = ScriptedBackend(ScriptedOptions(responses=[ScriptedStep(
        text=PROJECTED_ALLOW.replace("risk: 0.05\n", ""),
        verdict_probs={"ALLOW": 0.01, "ANNOTATE": 0.01, "VETO": 0.98})]))
    config = config.with_overrides(**{"prompt.template": "consequence_compact_projection"})
    with Guard(config, backend=backend) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status, d.risk) == (Verdict.ALLOW, Status.OK, 0.0)
