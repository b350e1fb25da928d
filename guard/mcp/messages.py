"""What the proxy tells the model: pure functions from decisions to text and result bodies.

No MCP SDK here: the proxy wraps these in MCP results, and they are tested on their own. The
text is written for the model on the other side, so it can re-plan: what was not run, why,
the projected consequence and the hazards, and what to do next.
"""

from __future__ import annotations

from typing import Any

from guard.errors import shown_name
from guard.types import ActionProposal, Decision, Status, Verdict

#: The `_meta` key under which a forwarded or refused result carries the guard's decision.
META_KEY = "embodied-guard/decision"


def decision_summary(decision: Decision) -> dict[str, Any]:
    """The decision fields a client needs, as plain JSON (the audit log has the rest)."""
    return {
        "id": decision.id,
        "verdict": decision.verdict.value,
        "status": decision.status.value,
        "risk": round(decision.risk, 3),
        "hazards": [h.model_dump(mode="json") for h in decision.hazards],
        "rationale": decision.rationale,
        "rules": list(decision.rules),
        "mode": decision.mode,
        "model": decision.model,
        "error": decision.error,
    }


def _hazards(decision: Decision) -> str:
    parts = []
    for h in decision.hazards:
        text = f"{h.category}: {h.description}"
        if h.consequence:
            text += f" -> {h.consequence}"
        parts.append(text)
    return "; ".join(parts)


def consequence_text(decision: Decision) -> str:
    """The projected consequences, from the hazards ("" when the judge named none, as for a
    decision by a rule or a check that did not run)."""
    return "; ".join(h.consequence for h in decision.hazards if h.consequence)


def _why(decision: Decision) -> str:
    lines = []
    consequence = consequence_text(decision)
    if consequence:
        lines.append(f"Projected consequence: {consequence}")
    hazards = _hazards(decision)
    if hazards:
        lines.append(f"Hazards: {hazards}")
    if decision.rationale:
        lines.append(f"Rationale: {decision.rationale}")
    if decision.rules:
        lines.append(f"Rules: {', '.join(decision.rules)}")
    return "\n".join(lines)


def veto_text(decision: Decision, proposal: ActionProposal, reason: str | None = None) -> str:
    """The tool error the model reads when a call was refused: nothing ran, and why.

    Args:
        decision: The guard's decision for the call.
        proposal: What was judged.
        reason: Why an allowed-to-ask call was still refused (the human declined, no answer);
            None for the guard's own veto.
    """
    tool = shown_name(proposal.name)
    head = f"VETOED by the safety guard: the tool '{tool}' was NOT run."
    if reason is not None:
        head = f"NOT RUN: the tool '{tool}' needed a human's approval and {reason}."
    elif decision.status is not Status.OK:
        head = (
            f"VETOED by the safety guard: the safety check could not run "
            f"({decision.status.value}: {decision.error or 'no detail'}), so the tool "
            f"'{tool}' was NOT run (fail closed)."
        )
    lines = [head]
    why = _why(decision)
    if why:
        lines.append(why)
    lines.append(
        f"Decision {decision.id}: verdict {decision.verdict.value}, status "
        f"{decision.status.value}, risk {decision.risk:.2f}."
    )
    lines.append("Re-plan: do not retry the same call unchanged; change the action or the scene.")
    return "\n".join(lines)


def warning_text(decision: Decision, proposal: ActionProposal) -> str:
    """The warning attached to a result that ran under an annotate (or a veto that does not
    block: shadow mode, or a failed check the policy lets pass)."""
    tool = shown_name(proposal.name)
    if decision.status is not Status.OK:
        head = (
            f"WARNING from the safety guard: '{tool}' ran UNCHECKED (the check could "
            f"not run: {decision.status.value}: {decision.error or 'no detail'})."
        )
    elif decision.verdict is Verdict.VETO:
        head = (
            f"WARNING from the safety guard (shadow mode): '{tool}' would have been "
            "vetoed and ran anyway."
        )
    else:
        head = f"WARNING from the safety guard: '{tool}' ran with a warning."
    why = _why(decision)
    return head + ("\n" + why if why else "") + f"\nDecision {decision.id}."


def approval_question(decision: Decision, proposal: ActionProposal) -> str:
    """The question put to the human through MCP elicitation for an annotate."""
    lines = [f"The safety guard flags the robot action '{proposal.as_text()}'."]
    why = _why(decision)
    if why:
        lines.append(why)
    lines.append("Run it anyway?")
    return "\n".join(lines)


__all__ = [
    "META_KEY",
    "approval_question",
    "consequence_text",
    "decision_summary",
    "veto_text",
    "warning_text",
]
