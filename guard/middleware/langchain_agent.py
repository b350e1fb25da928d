"""The guard as LangChain v1 agent middleware (optional: needs `langchain` 1.x).

    from langchain.agents import create_agent
    from guard.middleware.langchain_agent import GuardMiddleware

    agent = create_agent(model, tools=[move_to, turn_on_stove],
                         middleware=[GuardMiddleware(guard, frames=camera, approve=ask_operator)])

`GuardMiddleware` wraps the execution of every tool call the agent's model makes
(`wrap_tool_call` / `awrap_tool_call`), whatever the tool: those given to `create_agent`, tools
loaded later (an MCP server's tools through langchain-mcp-adapters, tools another middleware
registers at run time). It holds no tool list, so there is nothing to re-wrap when tools
change. List it first in `middleware=` so that it is the outermost wrapper and sees each call
before any other middleware runs or replaces the tool.

Each call is judged once, through `guard.middleware.gate.ToolGate` (the tool's name, its
description and the arguments the model wrote). A veto answers the call with a `ToolMessage`
(`status="error"`) holding the veto (hazards, consequences, rationale): the tool never runs and
the model can re-plan; `on_veto="raise"` raises `ActionVetoed` out of the agent instead. An
annotate goes to `approve` (a person) when given, and anything but True is answered like a
veto. A check that could not run is a veto.

For LangChain tools one at a time (no agent), see `guard.middleware.langchain_tools`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from guard.errors import MissingExtraError
from guard.middleware.decorator import WarningHandler, log_warning
from guard.middleware.gate import Approver, GateResult, ToolGate

try:
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.messages import ToolMessage
except ImportError as exc:  # pragma: no cover - exercised where langchain is absent
    raise MissingExtraError("langchain", "langchain", "the LangChain agent middleware") from exc

if TYPE_CHECKING:
    from langchain.agents.middleware import ToolCallRequest
    from langgraph.types import Command

    from guard.core import Guard

OnVeto = Literal["tool_message", "raise"]


class GuardMiddleware(AgentMiddleware):  # type: ignore[type-arg]
    """Agent middleware that judges every tool call before the tool runs.

    Args:
        guard: The `guard.core.Guard` that judges and audits.
        frames: Frame source, called once per tool call (async ones: async agent runs only).
        approve: Called with (decision, proposal) for annotated calls; only True lets the
            call run (async approvers: async agent runs only). None: annotated calls run after
            `on_warning`.
        on_warning: Gets annotated calls (and shadow-mode vetoes) when nobody is asked.
        on_veto: "tool_message" (default: the model reads the veto as the tool's answer) or
            "raise" (`ActionVetoed` leaves the agent run).

    Raises:
        ValueError: `on_veto` is neither "tool_message" nor "raise".
    """

    def __init__(
        self,
        guard: Guard,
        *,
        frames: Callable[[], Any] | None = None,
        approve: Approver | None = None,
        on_warning: WarningHandler = log_warning,
        on_veto: OnVeto = "tool_message",
    ) -> None:
        super().__init__()
        if on_veto not in ("tool_message", "raise"):
            raise ValueError(f"on_veto must be 'tool_message' or 'raise', got {on_veto!r}")
        self.gate = ToolGate(guard, frames=frames, approve=approve, on_warning=on_warning)
        self.on_veto = on_veto

    @staticmethod
    def _call(request: ToolCallRequest) -> tuple[str, Any, str, str | None]:
        call = request.tool_call
        tool = request.tool  # None for a tool the agent was not built with
        description = str(getattr(tool, "description", "") or "") if tool is not None else ""
        return str(call.get("name") or ""), call.get("args"), description, call.get("id")

    def _refusal(self, request: ToolCallRequest, result: GateResult) -> ToolMessage:
        if self.on_veto == "raise":
            result.raise_if_blocked()
        call = request.tool_call
        return ToolMessage(
            content=result.message,
            tool_call_id=str(call.get("id") or ""),
            name=str(call.get("name") or ""),
            status="error",
        )

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Judge the call; run it through `handler` only when the guard lets it."""
        name, args, description, call_id = self._call(request)
        result = self.gate.check(name, args, description=description, call_id=call_id)
        return handler(request) if result.run else self._refusal(request, result)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """`wrap_tool_call` for async agent runs (the judge runs off the event loop)."""
        name, args, description, call_id = self._call(request)
        result = await self.gate.acheck(name, args, description=description, call_id=call_id)
        return await handler(request) if result.run else self._refusal(request, result)


__all__ = ["GuardMiddleware"]
