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
- `ActionVetoed` (from `guard.errors`): what a veto raises by default; carries the decision.

Frame sources live in `guard.frames`. See `examples/guarded_agent.py` for a runnable agent loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guard.errors import ActionVetoed
from guard.middleware.decorator import GuardOptions, guarded, is_guarded, jsonable, log_warning
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
    from guard.middleware.langchain_tools import guard_langchain_tool, guard_langchain_tools


def __getattr__(name: str) -> Any:
    # LangChain adapters load on first use: importing the middleware needs no langchain.
    if name in ("guard_langchain_tool", "guard_langchain_tools"):
        from guard.middleware import langchain_tools

        return getattr(langchain_tools, name)
    raise AttributeError(f"module 'guard.middleware' has no attribute {name!r}")


__all__ = [
    "ActionVetoed",
    "GuardOptions",
    "GuardedToolset",
    "ToolCall",
    "arun_tool_call",
    "guard_langchain_tool",
    "guard_langchain_tools",
    "guarded",
    "is_guarded",
    "jsonable",
    "log_warning",
    "parse_tool_call",
    "proposal_from_tool_call",
    "run_tool_call",
    "veto_message",
]
