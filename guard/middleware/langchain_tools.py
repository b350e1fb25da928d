"""LangChain tools behind the guard (optional: needs `langchain-core`).

    from langchain_core.tools import tool

    @tool
    def turn_on_stove(burner: int) -> str:
        "Turn on one burner of the stove."
        ...

    safe_tools = guard_langchain_tools([turn_on_stove, move_arm], guard, frames=camera)
    agent = create_agent(model, safe_tools)

The guarded tool keeps the original's name, description and argument schema, so the agent sees
the same tool. By default a veto raises LangChain's `ToolException` (chaining `ActionVetoed`)
and the wrapper handles it, so the agent reads the veto (hazards, rationale) as the tool's
output and can re-plan; pass `on_veto="raise"` to get `ActionVetoed` out of the agent instead,
or `"return"` / a handler as with `guarded`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from guard.errors import ActionVetoed
from guard.middleware.decorator import GuardOptions, Judge, OnVeto, WarningHandler
from guard.middleware.decorator import log_warning as _log_warning
from guard.middleware.openai_tools import veto_message
from guard.types import ActionProposal
from guard.wire.proposals import proposal_from_call

TOOL_ERROR = "tool_error"

if TYPE_CHECKING:
    from guard.core import Guard


def _require_langchain() -> Any:
    try:
        import langchain_core.tools as lc_tools
    except ImportError as exc:
        from guard.errors import MissingExtraError

        raise MissingExtraError("langchain-core", "langchain", "guarded LangChain tools") from exc
    return lc_tools


def guard_langchain_tool(
    tool: Any,
    guard: Guard,
    *,
    frames: Callable[[], Any] | None = None,
    on_veto: OnVeto | str = TOOL_ERROR,
    refusal: Any = None,
    on_warning: WarningHandler = _log_warning,
) -> Any:
    """A LangChain tool that asks the guard before running `tool`.

    Args:
        tool: A LangChain `BaseTool` (e.g. made with `@tool`).
        guard: The `guard.core.Guard` that judges.
        frames: Frame source (async ones work for async invocations only).
        on_veto: "tool_error" (default: a ToolException the agent reads), "raise"
            (ActionVetoed), "return" (`refusal`), or a handler of ActionVetoed.
        refusal: What a vetoed call returns with `on_veto="return"`.
        on_warning: Annotate (and shadow-veto) handler, as in `guarded`.

    Returns:
        A `StructuredTool` with the same name, description and argument schema.
    """
    lc_tools = _require_langchain()
    tool_exception = lc_tools.ToolException

    def raise_tool_error(exc: ActionVetoed) -> Any:
        raise tool_exception(veto_message(exc)) from exc

    options = GuardOptions(
        frames=frames,
        name=tool.name,
        describe=tool.description or "",
        ignore=frozenset(),
        on_veto=raise_tool_error if on_veto == TOOL_ERROR else on_veto,  # type: ignore[arg-type]
        refusal=refusal,
        on_warning=on_warning,
    )
    judge = Judge(guard, options)

    def proposal(kwargs: dict[str, Any]) -> ActionProposal:
        return proposal_from_call(tool.name, kwargs, description=tool.description or "")

    def run(**kwargs: Any) -> Any:
        p, decision = judge.propose(lambda: proposal(kwargs), tool.name)
        go, value = judge.outcome(decision or judge.check(p), p)
        return tool.invoke(kwargs) if go else value

    async def arun(**kwargs: Any) -> Any:
        p, decision = judge.propose(lambda: proposal(kwargs), tool.name)
        go, value = judge.outcome(decision or await judge.acheck(p), p)
        if hasattr(value, "__await__"):
            value = await value
        return await tool.ainvoke(kwargs) if go else value

    handle = tool.handle_tool_error
    wrapped = lc_tools.StructuredTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        func=run,
        coroutine=arun,
        return_direct=tool.return_direct,
        # the agent must read a veto as the tool's output; a handler of the caller's own wins
        handle_tool_error=handle if handle else on_veto == TOOL_ERROR,
    )
    wrapped.metadata = {**(tool.metadata or {}), "guarded": True}
    return wrapped


def guard_langchain_tools(tools: Iterable[Any], guard: Guard, **options: Any) -> list[Any]:
    """`guard_langchain_tool` for each tool, with the same options."""
    return [guard_langchain_tool(t, guard, **options) for t in tools]


__all__ = ["guard_langchain_tool", "guard_langchain_tools"]
