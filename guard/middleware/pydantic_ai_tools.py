"""The guard in front of pydantic-ai tools (optional: needs `pydantic-ai-slim`).

    from pydantic_ai import Agent
    from guard.middleware.pydantic_ai_tools import GuardCapability

    agent = Agent(model, tools=[move_to, turn_on_stove], toolsets=[ros_mcp_server],
                  capabilities=[GuardCapability(guard, frames=camera, approve=ask_operator)])

`GuardCapability` wraps the agent's whole assembled toolset on every run (pydantic-ai's
`get_wrapper_toolset`), so every tool call is judged: function tools, toolsets, MCP servers and
tools that appear later. `guard_toolset(toolset, guard, ...)` guards one toolset only
(a `WrapperToolset`, like pydantic-ai's own `ApprovalRequiredToolset`).

Each call is judged once, through `guard.middleware.gate.ToolGate` (the tool's name, its
description and the validated arguments). A veto never runs the tool: by default it raises
pydantic-ai's `ToolFailed` with the veto (hazards, consequences, rationale) as the message, so
the model reads it as a failed tool result and re-plans without spending its retry budget;
`on_veto="retry"` raises `ModelRetry` instead, `"raise"` lets `ActionVetoed` end the run.

Annotate maps to human approval in one of two ways:
  approve=callable   the callable (sync or async) is asked during the run; only True runs
                     the call, anything else answers it like a veto.
  approve="defer"    pydantic-ai's deferred tools: the call raises `ApprovalRequired`, the run
                     ends with `DeferredToolRequests` (the agent's output_type must allow it),
                     and the next run resumes with `DeferredToolResults`. An approved call is
                     judged again against the then-current frame (the scene may have changed
                     while a person looked): a veto still vetoes, an annotate runs, and the
                     approval is audited. A person's denial never reaches the toolset, so
                     pydantic-ai answers it (`ToolDenied`) and only the annotate is audited.
A check that could not run is a veto.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from guard.errors import MissingExtraError
from guard.middleware.decorator import WarningHandler, log_warning
from guard.middleware.gate import Approver, GateResult, ToolGate

try:
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.exceptions import ApprovalRequired, ModelRetry, ToolFailed
    from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
except ImportError as exc:  # pragma: no cover - exercised where pydantic-ai is absent
    raise MissingExtraError("pydantic-ai-slim", "pydantic-ai", "the pydantic-ai guard") from exc

if TYPE_CHECKING:
    from pydantic_ai import RunContext
    from pydantic_ai.toolsets import ToolsetTool

    from guard.core import Guard

OnVeto = Literal["fail", "retry", "raise"]
DEFER = "defer"
METADATA_KEY = "embodied_guard"


def _approved(decision: Any, proposal: Any) -> bool:
    return True  # a person approved through DeferredToolResults


@dataclass
class _Gates:
    """The judging half shared by every toolset one capability wraps."""

    during_run: ToolGate
    resumed: ToolGate
    defer: bool
    on_veto: OnVeto


def _gates(
    guard: Guard,
    frames: Callable[[], Any] | None,
    approve: Approver | Literal["defer"] | None,
    on_warning: WarningHandler,
    on_veto: OnVeto,
) -> _Gates:
    if on_veto not in ("fail", "retry", "raise"):
        raise ValueError(f"on_veto must be 'fail', 'retry' or 'raise', got {on_veto!r}")
    if isinstance(approve, str) and approve != DEFER:
        raise ValueError(f"approve must be a callable, 'defer' or None, got {approve!r}")
    defer = approve == DEFER
    during_run = ToolGate(
        guard, frames=frames, approve=None if defer else approve,  # type: ignore[arg-type]
        on_warning=(lambda d, p: None) if defer else on_warning,
    )
    resumed = ToolGate(guard, frames=frames, approve=_approved,
                       approved_by="deferred_tool_results")
    return _Gates(during_run, resumed, defer, on_veto)


def _metadata(result: GateResult) -> dict[str, Any]:
    """What `DeferredToolRequests.metadata` carries for a person to decide on."""
    return {METADATA_KEY: {
        "decision": result.decision.model_dump(mode="json"),
        "proposal": result.proposal.model_dump(mode="json"),
    }}


@dataclass
class GuardToolset(WrapperToolset[Any]):
    """A toolset whose every call the guard judges first (build it with `guard_toolset`)."""

    gates: _Gates = field(kw_only=True)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        """Judge the call, then run it, defer it for approval, or answer with the veto."""
        gates = self.gates
        resumed = gates.defer and ctx.tool_call_approved
        gate = gates.resumed if resumed else gates.during_run
        result = await gate.acheck(
            name,
            tool_args,
            description=tool.tool_def.description or "",
            call_id=ctx.tool_call_id,
        )
        if result.run:
            if (gates.defer and not resumed and result.outcome == "annotate"
                    and result.decision.mode != "shadow"):
                raise ApprovalRequired(metadata=_metadata(result))
            return await super().call_tool(name, tool_args, ctx, tool)
        if gates.on_veto == "raise":
            result.raise_if_blocked()
        if gates.on_veto == "retry":
            raise ModelRetry(result.message)
        raise ToolFailed(result.message)


def guard_toolset(
    toolset: AbstractToolset[Any],
    guard: Guard,
    *,
    frames: Callable[[], Any] | None = None,
    approve: Approver | Literal["defer"] | None = None,
    on_warning: WarningHandler = log_warning,
    on_veto: OnVeto = "fail",
) -> GuardToolset:
    """`toolset` with every call judged by the guard first.

    Args:
        toolset: Any pydantic-ai toolset (a `FunctionToolset`, an MCP server, ...).
        guard: The `guard.core.Guard` that judges and audits.
        frames: Frame source (sync or async), called once per tool call.
        approve: For annotated calls: a callable asked during the run (True runs the call),
            "defer" (pydantic-ai's deferred approval), or None (run after `on_warning`).
        on_warning: Gets annotated calls (and shadow-mode vetoes) when nobody is asked.
        on_veto: "fail" (ToolFailed, default), "retry" (ModelRetry) or "raise" (ActionVetoed).

    Raises:
        ValueError: A bad `approve` or `on_veto`.
    """
    return GuardToolset(toolset, gates=_gates(guard, frames, approve, on_warning, on_veto))


class GuardCapability(AbstractCapability[Any]):
    """An agent capability that puts every tool of the agent behind the guard.

    Args: as `guard_toolset`, without the toolset.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        frames: Callable[[], Any] | None = None,
        approve: Approver | Literal["defer"] | None = None,
        on_warning: WarningHandler = log_warning,
        on_veto: OnVeto = "fail",
    ) -> None:
        self.gates = _gates(guard, frames, approve, on_warning, on_veto)

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live Guard: not built from a spec

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any]:
        """Called by pydantic-ai on every run with the agent's assembled toolset."""
        return GuardToolset(toolset, gates=self.gates)


__all__ = ["DEFER", "METADATA_KEY", "GuardCapability", "GuardToolset", "guard_toolset"]
