"""`ToolGate`: one tool call, by name and arguments, through the guard (for framework adapters).

    gate = ToolGate(guard, frames=camera, approve=ask_operator)
    result = await gate.acheck("turn_on_stove", '{"burner": 2}', description="Light a burner")
    if result.run:
        ...                       # run the tool
    else:
        reply(result.message)     # what the model reads instead: the veto and its consequences

The agent-framework adapters (`openai_agents`, `langchain_agent`, `pydantic_ai_tools`) meet a
tool call as a name, arguments (a dict, or the JSON text the model wrote) and a description;
this is where they become one judgement, exactly as for a decorated tool: the proposal is built
and judged by `decorator.Judge`, whose `outcome` decides whether the call is blocked or a
warning is due. The judge reads the description's first line, as for a decorated tool (its
docstring's first line) and in `guard mcp-proxy` (the MCP tool's), so one tool is one proposal
whichever front end it arrives through.

What the gate adds is human approval. A decision that lets the call run but is not a clean
allow (an annotate, or a failed check the policy lets pass) goes to `approve(decision,
proposal)` when one is given, except in shadow mode, which never blocks. Only `True` approves:
`False`, any other answer, or an approver that raises is a refusal (fail closed). Every answer
is audited as an `approval` record next to the decision; an answer that could not be audited
is a refusal too. Without an approver the decision goes to `on_warning` and the call runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from guard.errors import ActionVetoed
from guard.middleware.decorator import GuardOptions, Judge, WarningHandler, log_warning
from guard.middleware.openai_tools import veto_message
from guard.types import ActionProposal, Decision
from guard.wire.proposals import parse_arguments, proposal_from_call

if TYPE_CHECKING:
    from guard.core import Guard

#: Asked before a call the guard annotated runs: True approves, anything else refuses.
Approver = Callable[[Decision, ActionProposal], bool | Awaitable[bool]]
Outcome = Literal["allow", "annotate", "veto", "declined"]


class _WarningDue:
    """What `Judge.outcome` returns when the call may run but a warning is due."""


_WARNING_DUE = _WarningDue()


def _warning_due(decision: Decision, proposal: ActionProposal) -> _WarningDue:
    return _WARNING_DUE


def _keep(vetoed: ActionVetoed) -> ActionVetoed:
    return vetoed


@dataclasses.dataclass(frozen=True)
class GateResult:
    """What the gate decided for one call.

    Attributes:
        run: True when the tool may run.
        outcome: "allow", "annotate" (runs: approved, or warned without an approver), "veto"
            (the guard blocked it) or "declined" (the approver refused an annotated call).
        message: What the model reads instead of the tool's output when `run` is False (JSON
            with the hazards, their consequences and the rationale); '' when it runs.
        decision: The guard's decision (audited).
        proposal: The proposal that was judged.
        vetoed: The `ActionVetoed` for a veto (adapters that raise use it), else None.
    """

    run: bool
    outcome: Outcome
    message: str
    decision: Decision
    proposal: ActionProposal
    vetoed: ActionVetoed | None = None

    def raise_if_blocked(self) -> None:
        """Raise `ActionVetoed` when the call must not run (a veto or a declined approval)."""
        if not self.run:
            raise self.vetoed or ActionVetoed(self.decision, self.proposal)


def declined_message(decision: Decision, proposal: ActionProposal, reason: str) -> str:
    """What the model reads when a person did not approve a call the guard annotated."""
    body = json.loads(veto_message(ActionVetoed(decision, proposal)))
    body.update(error="declined_by_operator", reason=reason,
                note="The action was not executed: the operator did not approve it.")
    return json.dumps(body, ensure_ascii=False)


class ToolGate:
    """Judges tool calls by name and arguments; asks `approve` about annotated ones.

    Args:
        guard: The `guard.core.Guard` that judges (and audits).
        frames: Frame source, as for `guarded` (async ones only through `acheck`).
        approve: Human approval for calls the guard annotated (see the module docstring);
            None: no approval, the call runs after `on_warning`.
        on_warning: Gets annotate decisions (and shadow-mode vetoes) when no approval is asked;
            default: a WARNING log line. Raise from it to stop the call.
        approved_by: Who answers, as the approval records name it (default "callback").
    """

    def __init__(
        self,
        guard: Guard,
        *,
        frames: Callable[[], Any] | None = None,
        approve: Approver | None = None,
        on_warning: WarningHandler = log_warning,
        approved_by: str = "callback",
    ) -> None:
        if approve is not None and not callable(approve):
            raise TypeError(f"approve must be a callable, got {type(approve).__name__}")
        self.guard = guard
        self.approve = approve
        self.on_warning = on_warning
        self.approved_by = approved_by
        self._judge = Judge(
            guard, GuardOptions(frames=frames, on_veto=_keep, on_warning=_warning_due)
        )

    # -- the two entry points --------------------------------------------------------------

    def check(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None,
        *,
        description: str = "",
        call_id: str | None = None,
    ) -> GateResult:
        """Judge one call from synchronous code (an async approver is a refusal here).

        Args:
            name: The tool name.
            arguments: The call's arguments: a mapping, or the JSON object text the model
                wrote ('' or None: none). Text that is not a JSON object is an audited
                invalid_input veto.
            description: What the tool does (the judge reads its first line with the name).
            call_id: The framework's tool-call id, kept as the proposal id (None or '', a
                framework's unset id: a new id; a blank one is an audited invalid_input veto).

        Returns:
            The `GateResult`; the decision is already in the audit log.
        """
        proposal, decision = self._propose(name, arguments, description, call_id)
        if decision is None:
            decision = self._judge.check(proposal)
        result = self._settle(decision, proposal)
        if result is not None:
            return result
        if self._asks(decision):
            assert self.approve is not None
            try:
                answer: Any = self.approve(decision, proposal)
            except Exception as exc:
                return self._approval(decision, proposal, False, _failed(exc))
            if inspect.isawaitable(answer):
                close = getattr(answer, "close", None)
                if close is not None:
                    close()  # never awaited: silence "coroutine was never awaited"
                return self._approval(
                    decision, proposal, False, "an async approver needs an async agent run"
                )
            return self._approval(decision, proposal, answer, None)
        self.on_warning(decision, proposal)
        return self._ran(decision, proposal)

    async def acheck(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None,
        *,
        description: str = "",
        call_id: str | None = None,
    ) -> GateResult:
        """`check` for async code: the judge runs off the event loop; async frame sources,
        approvers and warning handlers are awaited."""
        proposal, decision = self._propose(name, arguments, description, call_id)
        if decision is None:
            decision = await self._judge.acheck(proposal)
        result = self._settle(decision, proposal)
        if result is not None:
            return result
        if self._asks(decision):
            assert self.approve is not None
            try:
                answer: Any = self.approve(decision, proposal)
                if inspect.isawaitable(answer):
                    answer = await answer
            except Exception as exc:
                return self._approval(decision, proposal, False, _failed(exc))
            return self._approval(decision, proposal, answer, None)
        warned = self.on_warning(decision, proposal)
        if inspect.isawaitable(warned):
            await warned
        return self._ran(decision, proposal)

    # -- shared steps ----------------------------------------------------------------------

    def _propose(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None,
        description: str,
        call_id: str | None,
    ) -> tuple[ActionProposal, Decision | None]:
        def make() -> ActionProposal:
            raw = dict(arguments) if isinstance(arguments, Mapping) else arguments
            return proposal_from_call(
                name, parse_arguments(raw), description=first_line(description), id=call_id
            )

        return self._judge.propose(make, str(name or ""))

    def _settle(self, decision: Decision, proposal: ActionProposal) -> GateResult | None:
        """The result when `Judge.outcome` settles it (allow, veto); None: a warning is due."""
        run, value = self._judge.outcome(decision, proposal)
        if not run:
            return GateResult(False, "veto", veto_message(value), decision, proposal, value)
        if value is _WARNING_DUE:
            return None
        return GateResult(True, "allow", "", decision, proposal)

    def _asks(self, decision: Decision) -> bool:
        return self.approve is not None and decision.mode != "shadow"

    def _ran(self, decision: Decision, proposal: ActionProposal) -> GateResult:
        return GateResult(True, "annotate", "", decision, proposal)

    def _approval(
        self, decision: Decision, proposal: ActionProposal, answer: Any, error: str | None
    ) -> GateResult:
        approved = answer is True
        if error is None and not isinstance(answer, bool):
            error = f"the approver answered {type(answer).__name__}, not a bool"
        record: dict[str, Any] = {
            "decision_id": decision.id,
            "proposal_id": proposal.id,
            "tool": proposal.name,
            "verdict": decision.verdict.value,
            "approved": approved,
            "by": self.approved_by,
        }
        if error is not None:
            record["error"] = error
        try:
            self.guard.audit.append("approval", record)
        except Exception as exc:  # an unlogged approval is not an approval
            approved, error = False, f"the approval could not be audited: {exc}"
        if approved:
            return self._ran(decision, proposal)
        reason = error or "the operator declined"
        return GateResult(
            False, "declined", declined_message(decision, proposal, reason), decision, proposal
        )


def first_line(description: str | None) -> str:
    """The first non-blank line of a tool's description: what the judge reads.

    Raises:
        TypeError: the description is not text (the gate's one-line refusal names it).
    """
    if description is None:
        return ""
    if not isinstance(description, str):
        raise TypeError(f"the tool description must be text, got {type(description).__name__}")
    for line in description.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _failed(exc: Exception) -> str:
    return f"the approver failed: {type(exc).__name__}: {exc}"


__all__ = ["Approver", "GateResult", "ToolGate", "declined_message", "first_line"]
