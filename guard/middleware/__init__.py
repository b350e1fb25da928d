"""Python middleware: the guard in front of an agent's tools.

    from guard.middleware import guarded, GuardedToolset, run_tool_call
    from guard.frames import OpenCVCapture

    @guarded(guard, frames=OpenCVCapture(0))
    def turn_on_stove(burner: int) -> str: ...

- `guarded`: decorator for plain and async tools (keeps name, docstring, signature).
- `GuardedToolset`: many tools at once, callable by name.
- `run_tool_call` / `arun_tool_call`: OpenAI-style tool calls (name + JSON arguments) through a
  toolset, answered with the tool message the model reads next.
- `guard_langchain_tool(s)`: LangChain tools (needs langchain-core; imported on use).
- `ToolGate`: one tool call by name and arguments through the guard, with human approval of
  annotated calls; what the agent-framework adapters below share.
- Agent frameworks (each imported on use, each needs its library):
  `guard_agent` / `guard_tool_input_guardrail` (OpenAI Agents SDK, `openai_agents`),
  `GuardMiddleware` (LangChain v1 `create_agent`, `langchain_agent`),
  `GuardCapability` / `guard_toolset` (pydantic-ai, `pydantic_ai_tools`).
- `ActionVetoed` (from `guard.errors`): what a veto raises by default; carries the decision.

Frame sources live in `guard.frames`. See `examples/guarded_agent.py` for a runnable agent loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guard.errors import ActionVetoed
from guard.middleware.decorator import GuardOptions, guarded, is_guarded, jsonable, log_warning
from guard.middleware.gate import Approver, GateResult, ToolGate
from guard.middleware.openai_tools import (
    ToolCall,
    arun_tool_call,
    parse_tool_call,
    proposal_from_tool_call,
    run_tool_call,
    veto_message,
)
from guard.middleware.toolset import GuardedToolset

if TYPE_CHECKING:
    from guard.middleware.langchain_agent import GuardMiddleware
    from guard.middleware.langchain_tools import guard_langchain_tool, guard_langchain_tools
    from guard.middleware.openai_agents import guard_agent, guard_tool_input_guardrail
    from guard.middleware.pydantic_ai_tools import GuardCapability, guard_toolset

# Framework adapters load on first use: importing the middleware needs none of the frameworks.
_LAZY = {
    "guard_langchain_tool": "langchain_tools",
    "guard_langchain_tools": "langchain_tools",
    "GuardMiddleware": "langchain_agent",
    "guard_agent": "openai_agents",
    "guard_tool_input_guardrail": "openai_agents",
    "GuardCapability": "pydantic_ai_tools",
    "guard_toolset": "pydantic_ai_tools",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"guard.middleware.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'guard.middleware' has no attribute {name!r}")


__all__ = [
    "ActionVetoed",
    "Approver",
    "GateResult",
    "GuardCapability",
    "GuardMiddleware",
    "GuardOptions",
    "GuardedToolset",
    "ToolCall",
    "ToolGate",
    "arun_tool_call",
    "guard_agent",
    "guard_langchain_tool",
    "guard_langchain_tools",
    "guard_tool_input_guardrail",
    "guard_toolset",
    "guarded",
    "is_guarded",
    "jsonable",
    "log_warning",
    "parse_tool_call",
    "proposal_from_tool_call",
    "run_tool_call",
    "veto_message",
]
