"""The parser's two promises, over 120,000 fuzzed answers: an ALLOW comes only from a valid
ALLOW answer, and a stated risk is never lost.

The answers are built from the grammar's pieces and then mutated the ways a model, a proxy
or an attacker mutates text: Unicode case look-alikes ('riſk', 'rİsk', Kelvin sign), other
scripts' letters, odd whitespace and line breaks, markdown, repeated and reordered fields.
Seeded, so a failure reproduces.
"""

from __future__ import annotations

import random
import re
import unicodedata

from guard.config import PolicyConfig
from guard.policy import RuleOutcome, decide
from guard.prompting.parser import ParseError, parse_answer
from guard.types import Verdict

N_ANSWERS = 120_000

_VERDICTS = ["ALLOW", "ANNOTATE", "VETO", "allow", "Veto", "**ALLOW**", "verdict: ALLOW",
             "VERDICT: veto", "ALLOW.", "ALLOWED", "ALL0W", "AŁLOW", "ＡＬＬＯＷ", "allow:"]
_KEYS = ["risk", "RISK", "Risk", "riſk", "rİsk", "rısk", "rіsk", "risk ", "- risk", "ris k",
         "hazard", "consequence", "rationale", "HAZARD", "conſequence", "- hazard", "ri\u200bsk",
         "ｒｉｓｋ", "risks", "Risk score"]
_VALUES = ["0.9", "0.0", "1", "0.5", ".7", "1.5", "-0.1", "nan", "inf", "0x1", "9e-1", "٠.٩",
           "0.9 (high)", "", "fire | towel on burner | ignites", "fire | a | b | 0.8",
           "The towel ignites.", "high"]
_SEPS = [":", " :", ": ", "：", "=", " - ", ":\t"]
_BREAKS = ["\n", "\r\n", "\n\n", "\u2028", "\x85", "\x0b", "\n  ", "\r"]


def _answer(rng: random.Random) -> str:
    lines = [rng.choice(_VERDICTS)]
    for _ in range(rng.randint(0, 4)):
        lines.append(rng.choice(_KEYS) + rng.choice(_SEPS) + rng.choice(_VALUES))
    if rng.random() < 0.1:
        rng.shuffle(lines)
    text = lines[0]
    for line in lines[1:]:
        text += rng.choice(_BREAKS) + line
    if rng.random() < 0.2:  # a random character inserted, deleted or swapped
        i = rng.randrange(len(text) + 1)
        ch = chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
        text = text[:i] + ch + text[i + rng.randint(0, 1):]
    return text


def _folded(line: str) -> str:
    """A generous reading of a line: compatibility-normalised, case-folded, marks and
    zero-width characters removed, so every look-alike of 'risk' reads as 'risk'."""
    norm = unicodedata.normalize("NFKD", line).casefold()
    norm = "".join(c for c in norm if not unicodedata.combining(c) and c not in "\u200b")
    return norm.replace("ı", "i").replace("і", "i").strip().lstrip("-").strip()


_VALID_ALLOW_LINE = re.compile(r"(verdict\s*:\s*)?(\*\*allow\*\*|allow)", re.ASCII)


def test_allow_only_from_a_valid_allow_and_stated_risks_are_kept():
    rng = random.Random(20261205)
    policy = PolicyConfig()
    parsed = allows = 0
    for _ in range(N_ANSWERS):
        text = _answer(rng)
        try:
            answer = parse_answer(text)
        except ParseError:
            continue
        parsed += 1
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        # A stated risk is never lost: any line that reads as a risk line to a generous
        # reader was either parsed as the risk, or the whole answer was refused.
        for line in lines[1:]:
            if _folded(line).startswith("risk"):
                assert answer.risk is not None, (text, answer)
        verdict, _ = decide(answer, None, RuleOutcome(), policy)
        if verdict is Verdict.ALLOW:
            allows += 1
            # ALLOW only for a valid ALLOW answer: the first line is exactly the verdict
            # (ASCII case-insensitive), and any stated risk is below the thresholds.
            assert _VALID_ALLOW_LINE.fullmatch(lines[0].lower()), text
            assert not answer.hazards
            assert answer.risk is None or answer.risk < policy.annotate_threshold, text
    # The fuzzer reaches both sides of the grammar, or the promises above prove nothing.
    assert parsed > N_ANSWERS // 20 and allows > N_ANSWERS // 100, (parsed, allows)


def test_the_look_alikes_that_once_lost_a_risk():
    for text in ["ALLOW\nriſk: 0.9", "ALLOW\nrİsk: 0.9", "ALLOW\nRİSK: 0.9"]:
        try:
            answer = parse_answer(text)
        except ParseError:
            continue
        assert answer.risk == 0.9, text
    assert decide(parse_answer("ALLOW\nrisk: 0.9"), None, RuleOutcome(),
                  PolicyConfig())[0] is Verdict.VETO
