"""The guard as an OpenAI Agents SDK tool input guardrail (optional: needs `openai-agents`).

    from agents import Agent, Runner
    from guard.middleware.openai_agents import guard_agent

    agent = Agent(name="robot", tools=[move_to, turn_on_stove], mcp_servers=[ros_bridge])
    guard_agent(agent, guard, frames=camera, approve=ask_operator)
    result = await Runner.run(agent, "Boil water for tea.")

`guard_tool_input_guardrail` makes the `ToolInputGuardrail` the SDK runs before every function
tool it is attached to; `guard_agent` attaches one to every function tool of an agent (and of
the agents it hands off to) and to its MCP servers, whose tools the SDK builds per run with the
server's guardrails, so tools an MCP server lists later are guarded too.

Each call is judged once, through `guard.middleware.gate.ToolGate` (the proposal: the tool's
name, its description and the arguments the model wrote). A veto rejects the call: the tool
never runs and the model reads the veto (hazards, consequences, rationale) as the tool's output,
so it can re-plan; `on_veto="raise"` halts the run with the SDK's
`ToolInputGuardrailTripwireTriggered` instead (its `output.output_info["decision"]` holds the
decision). An annotate goes to `approve` (a person) when given: anything but True rejects the
call. A check that could not run is a veto; a guardrail that raises stops the run, never a
silent allow.

Only function tools (and local MCP servers' tools, which the SDK runs as function tools) have
input guardrails; `guard_agent` refuses an agent with any other tool that can act (shell,
computer, apply-patch, custom, hosted MCP) unless its name is passed in `unguarded`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from guard.errors import MissingExtraError, UsageError
from guard.middleware.decorator import WarningHandler, log_warning
from guard.middleware.gate import Approver, GateResult, ToolGate

if TYPE_CHECKING:
    from guard.core import Guard

log = logging.getLogger("guard.middleware")

OnVeto = Literal["reject", "raise"]
Describe = Callable[[str], str | Awaitable[str]]
GUARDRAIL_NAME = "embodied_guard"

# Tools that run on the provider's side and cannot reach the robot: nothing to guard here.
# A HostedMCPTool is not among them: the provider calls that MCP server directly, past any
# local guardrail (put `guard mcp-proxy` in front of the server instead).
_HOSTED = frozenset({
    "WebSearchTool", "FileSearchTool", "CodeInterpreterTool", "ImageGenerationTool",
    "ToolSearchTool",
})


def _require_agents() -> Any:
    try:
        import agents
    except ImportError as exc:
        raise MissingExtraError(
            "openai-agents", "agents-openai", "the OpenAI Agents guardrail"
        ) from exc
    return agents


def _description(agent: Any, name: str) -> str:
    """The description of the agent's function tool `name` ('' when the agent lists none:
    an MCP tool, or a tool the SDK built for this run)."""
    for tool in getattr(agent, "tools", None) or ():
        if getattr(tool, "name", None) == name:
            return str(getattr(tool, "description", "") or "")
    return ""


class _ServerDescriptions:
    """An MCP server's tool descriptions, listed once and again for a name not seen yet (the
    server's tool list can change); a listing that fails leaves the description empty, and
    the call is judged all the same."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.known: dict[str, str] = {}

    async def __call__(self, name: str) -> str:
        if name not in self.known:
            try:
                tools = await self.server.list_tools()
            except Exception as exc:
                log.debug("listing the tools of MCP server %r failed: %s",
                          getattr(self.server, "name", "?"), exc)
                return ""
            self.known = {str(t.name): str(t.description or t.title or "") for t in tools}
        return self.known.get(name, "")


def _output_info(result: GateResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome,
        "decision": result.decision.model_dump(mode="json"),
        "proposal": result.proposal.model_dump(mode="json"),
    }


def guard_tool_input_guardrail(
    guard: Guard,
    *,
    frames: Callable[[], Any] | None = None,
    approve: Approver | None = None,
    on_warning: WarningHandler = log_warning,
    on_veto: OnVeto = "reject",
    name: str = GUARDRAIL_NAME,
    describe: Describe | None = None,
) -> Any:
    """A `ToolInputGuardrail` that judges each function tool call with the guard.

    Args:
        guard: The `guard.core.Guard` that judges and audits.
        frames: Frame source (sync or async), called once per tool call.
        approve: Called with (decision, proposal) for annotated calls (may be async); only
            True lets the call run. None: annotated calls run after `on_warning`.
        on_warning: Gets annotated calls (and shadow-mode vetoes) when nobody is asked.
        on_veto: "reject" (default: the model reads the veto as the tool's output) or
            "raise" (the run stops with `ToolInputGuardrailTripwireTriggered`).
        name: The guardrail's name in the SDK's results and traces.
        describe: The description of a tool the agent does not list (sync or async, by tool
            name); `guard_agent` gives each MCP server's guardrail one that asks the server.

    Returns:
        An `agents.ToolInputGuardrail`; put it in a tool's `tool_input_guardrails`, or use
        `guard_agent`.

    Raises:
        MissingExtraError: `openai-agents` is not installed.
        ValueError: `on_veto` is neither "reject" nor "raise".
    """
    agents = _require_agents()
    if on_veto not in ("reject", "raise"):
        raise ValueError(f"on_veto must be 'reject' or 'raise', got {on_veto!r}")
    gate = ToolGate(guard, frames=frames, approve=approve, on_warning=on_warning)
    output = agents.ToolGuardrailFunctionOutput

    async def judge_tool_call(data: Any) -> Any:
        context = data.context
        description = _description(data.agent, context.tool_name)
        if not description and describe is not None:
            got = describe(context.tool_name)
            description = str(await got if inspect.isawaitable(got) else got)
        result = await gate.acheck(
            context.tool_name,
            context.tool_arguments,
            description=description,
            call_id=context.tool_call_id or None,
        )
        info = _output_info(result)
        if result.run:
            return output.allow(output_info=info)
        if on_veto == "raise":
            return output.raise_exception(output_info=info)
        return output.reject_content(result.message, output_info=info)

    guardrail = agents.ToolInputGuardrail(guardrail_function=judge_tool_call, name=name)
    guardrail.embodied_guard = gate  # so `guard_agent` can tell ours apart
    return guardrail


def _attach(holder: Any, guardrail: Any) -> None:
    current = list(getattr(holder, "tool_input_guardrails", None) or ())
    if not any(getattr(g, "embodied_guard", None) is not None for g in current):
        # first, so a veto rejects before other guardrails see the call
        holder.tool_input_guardrails = [guardrail, *current]


def guard_agent(
    agent: Any,
    guard: Guard,
    *,
    unguarded: Iterable[str] = (),
    **options: Any,
) -> Any:
    """Attach the guard's tool input guardrail to every function tool and MCP server of
    `agent` and of the agents it hands off to (in place; once per tool, so calling it again
    after adding tools guards the new ones only).

    Args:
        agent: An `agents.Agent`.
        guard: The `guard.core.Guard` that judges.
        unguarded: Names of non-function tools that can act (shell, computer, apply-patch,
            custom, hosted MCP) to accept without a guard; any other such tool is refused.
        **options: `guard_tool_input_guardrail` options (frames, approve, on_warning,
            on_veto, name); MCP servers' guardrails describe tools by asking the server.

    Returns:
        The same agent.

    Raises:
        UsageError: The agent has a tool that can act but takes no input guardrail.
    """
    agents = _require_agents()
    guardrail = guard_tool_input_guardrail(guard, **options)
    accepted = set(unguarded)
    seen: set[int] = set()
    todo = [agent]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for tool in getattr(current, "tools", None) or ():
            if isinstance(tool, agents.FunctionTool):
                _attach(tool, guardrail)
            elif type(tool).__name__ not in _HOSTED and getattr(tool, "name", "") not in accepted:
                raise UsageError(
                    f"agent {current.name!r}: tool {getattr(tool, 'name', '?')!r} "
                    f"({type(tool).__name__}) has no input guardrails, so the guard cannot "
                    "judge its calls; remove it or pass its name in unguarded="
                )
        for server in getattr(current, "mcp_servers", None) or ():
            _attach(server, guard_tool_input_guardrail(
                guard, **{**options, "describe": _ServerDescriptions(server)}))
        todo.extend(h for h in getattr(current, "handoffs", None) or ()
                    if isinstance(h, agents.Agent))
    return agent


__all__ = ["GUARDRAIL_NAME", "guard_agent", "guard_tool_input_guardrail"]
