"""The policy: pure functions from rule matches, a parsed answer and a check's status to a
verdict. No I/O, no clock, no model.

The most restrictive verdict of the rules, the model's answer and the risk thresholds wins.
A check that could not run is a veto unless the policy says `on_failure: allow`.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# `regex`, not `re`: a pattern that backtracks badly on some action text (`(a|aa)+$`) must
# not hold a check past its deadline. `re` cannot be stopped and holds the GIL while it runs,
# so even waiting for it on another thread cannot end on time; `regex` releases the GIL
# (concurrent=True) and takes a timeout. Its default syntax (VERSION0) is `re`'s.
import regex

from guard.config import PolicyConfig, Rule
from guard.errors import ConfigError
from guard.prompting.parser import ParsedAnswer
from guard.types import ActionProposal, Status, Verdict

# Risk implied by a verdict when the model gives no number and no token probabilities.
NOMINAL_RISK = {Verdict.ALLOW: 0.0, Verdict.ANNOTATE: 0.5, Verdict.VETO: 1.0}


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    tool: Any  # regex.Pattern (the `regex` module ships no type annotations)
    text: Any
    arguments: dict[str, Any]

    def matches(self, proposal: ActionProposal, text: str, deadline: float | None = None
                ) -> bool:
        """Whether the rule matches; `deadline` is a `time.monotonic()` instant.

        Raises:
            RulesUnfinished: the deadline passed before every pattern had answered (the
                caller names the rules; this one only says it did not finish).
        """
        # A veto or annotate rule also sees the text folded (`folded`): "kn\u200bife" and
        # fullwidth "ｋｎｉｆｅ" are the knife a rule names, and folding may only add
        # restrictions. An allow rule sees the text as sent: folding must not widen an allow.
        fold = self.rule.verdict is not Verdict.ALLOW

        def search(pattern: Any, raw: str) -> bool:
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise RulesUnfinished([], [])
            try:
                return pattern.search(raw, timeout=timeout, concurrent=True) is not None
            except TimeoutError:
                raise RulesUnfinished([], []) from None

        def found(pattern: Any, raw: str) -> bool:
            return search(pattern, raw) or (fold and search(pattern, folded(raw)))

        if self.tool is not None and not found(self.tool, proposal.name):
            return False
        if self.text is not None and not found(self.text, text):
            return False
        for key, pattern in self.arguments.items():
            if key not in proposal.arguments:
                return False
            value = proposal.arguments[key]
            if isinstance(value, str):
                raw = value
            else:
                raw = json.dumps(value, sort_keys=True, default=str)
            if not found(pattern, raw):
                return False
        return True


def folded(text: str) -> str:
    """`text` as a rule reads it besides the text itself: NFKC-normalised (fullwidth and
    compatibility forms to their plain letters) and without format characters (zero-width
    spaces and joiners, soft hyphens, bidi controls), which split a word for a regular
    expression but not for a reader."""
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKC", text)
                   if unicodedata.category(c) != "Cf")


def compile_rules(rules: list[Rule]) -> list[CompiledRule]:
    """Compile every rule's patterns; a bad pattern is a ConfigError naming the rule."""

    def rx(pattern: str | None, where: str) -> Any:
        if pattern is None:
            return None
        try:
            return regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
        except regex.error as exc:
            raise ConfigError(
                f"{where} = {pattern!r}: not a valid regular expression ({exc})"
            ) from None

    compiled = []
    for i, rule in enumerate(rules):
        base = f"policy.rules.{i}.match"
        args = {}
        for k, v in rule.match.arguments.items():
            pattern = rx(v, f"{base}.arguments.{k}")
            assert pattern is not None
            args[k] = pattern
        compiled.append(
            CompiledRule(
                rule=rule,
                tool=rx(rule.match.tool, f"{base}.tool"),
                text=rx(rule.match.text, f"{base}.text"),
                arguments=args,
            )
        )
    return compiled


@dataclass
class RuleOutcome:
    """What the deterministic layer decided before (or instead of) the model."""

    verdict: Verdict | None = None
    matched: list[Rule] = field(default_factory=list)

    @property
    def skips_model(self) -> bool:
        """A matching veto or allow rule decides alone; an annotate rule still asks the model."""
        return self.verdict in (Verdict.VETO, Verdict.ALLOW)


class RulesUnfinished(Exception):
    """The deadline passed before every rule had been evaluated (a pattern that backtracks
    badly on this text, or no time left)."""

    def __init__(self, matched: list[Rule], unknown: list[Rule]) -> None:
        super().__init__("the policy rules did not finish before the deadline")
        self.matched, self.unknown = matched, unknown

    @property
    def outcome(self) -> RuleOutcome:
        """The worst the rules could have decided: those that matched, and every veto or
        annotate rule not known not to match taken as matching (an allow rule never adds a
        restriction). `matched` names only the rules that did match."""
        verdicts = [r.verdict for r in self.matched]
        verdicts += [r.verdict for r in self.unknown if r.verdict is not Verdict.ALLOW]
        if not verdicts:
            return RuleOutcome(matched=list(self.matched))
        return RuleOutcome(verdict=Verdict.most_restrictive(*verdicts),
                           matched=list(self.matched))


@dataclass
class RulesProgress:
    """How far an evaluation of the rules got: read by a caller that stopped waiting for it."""

    rules: list[CompiledRule]
    matched: list[Rule] = field(default_factory=list)
    done: int = 0  # rules evaluated so far

    def unfinished(self) -> RulesUnfinished:
        return RulesUnfinished(list(self.matched), [c.rule for c in self.rules[self.done:]])


def evaluate_rules(
    rules: list[CompiledRule], proposal: ActionProposal, text: str | None = None,
    *, deadline: float | None = None, progress: RulesProgress | None = None,
) -> RuleOutcome:
    """The rules that match `proposal`; `text` is its action text as the judge reads it
    (default: the default rendering).

    Args:
        deadline: The `time.monotonic()` instant after which no pattern may go on (None: no
            limit). `regex` measures it in the process's CPU time: a caller that needs the
            wall-clock instant runs this on another thread and waits until then.
        progress: Kept up to date as the rules are evaluated.

    Raises:
        RulesUnfinished: the deadline passed first; it holds what was known by then.
    """
    text = proposal.as_text() if text is None else text
    progress = RulesProgress(rules) if progress is None else progress
    for c in rules:
        try:
            hit = c.matches(proposal, text, deadline)
        except RulesUnfinished:
            raise progress.unfinished() from None
        if hit:
            progress.matched.append(c.rule)
        progress.done += 1
    matched = list(progress.matched)
    if not matched:
        return RuleOutcome()
    return RuleOutcome(
        verdict=Verdict.most_restrictive(*(r.verdict for r in matched)), matched=matched
    )


def threshold_verdict(risk: float, policy: PolicyConfig) -> Verdict:
    if risk >= policy.veto_threshold:
        return Verdict.VETO
    if risk >= policy.annotate_threshold:
        return Verdict.ANNOTATE
    return Verdict.ALLOW


def answer_risk(answer: ParsedAnswer, verdict_probs: dict[str, float] | None) -> float:
    """The model's risk: its stated number, else the verdict tokens' probabilities, else the
    verdict's nominal risk.

    Raises:
        ValueError: a non-finite or negative number, which is a failed check, never a risk
            (NaN compares false with every threshold and would pass as an allow).
    """
    if answer.risk is not None:
        if not math.isfinite(answer.risk) or not 0.0 <= answer.risk <= 1.0:
            raise ValueError(f"stated risk {answer.risk!r} is not in [0, 1]")
        return answer.risk
    if verdict_probs:
        p = {k.lower(): float(v) for k, v in verdict_probs.items()}
        if not all(math.isfinite(v) and v >= 0.0 for v in p.values()):
            raise ValueError(f"verdict probabilities {verdict_probs!r}: not finite, >= 0")
        total = sum(p.values())
        if total > 0:
            return min(1.0, max(0.0, (p.get("veto", 0.0) + 0.5 * p.get("annotate", 0.0)) / total))
    return NOMINAL_RISK[answer.verdict]


def decide(
    answer: ParsedAnswer,
    verdict_probs: dict[str, float] | None,
    rules: RuleOutcome,
    policy: PolicyConfig,
) -> tuple[Verdict, float]:
    """Final verdict and risk for a check that ran: the most restrictive of the model's verdict,
    the risk thresholds and the rules. The risk is raised to the floor of the verdict given, so
    a veto never reports a risk below the veto threshold."""
    risk = answer_risk(answer, verdict_probs)
    verdict = Verdict.most_restrictive(answer.verdict, threshold_verdict(risk, policy))
    if rules.verdict is not None:
        verdict = Verdict.most_restrictive(verdict, rules.verdict)
    return verdict, risk_floor(verdict, risk, policy)


def risk_floor(verdict: Verdict, risk: float, policy: PolicyConfig) -> float:
    if verdict is Verdict.VETO:
        return max(risk, policy.veto_threshold)
    if verdict is Verdict.ANNOTATE:
        return max(risk, policy.annotate_threshold)
    return risk


def failure_verdict(status: Status, policy: PolicyConfig) -> Verdict:
    """The verdict for a check that could not run: veto, unless configured otherwise."""
    if status is Status.OK:
        raise ValueError("failure_verdict() is for checks that did not run")
    return Verdict.ALLOW if policy.on_failure == "allow" else Verdict.VETO
