"""A LangChain v1 agent (`create_agent`) with the guard as agent middleware.

    python examples/langchain_agent_guarded.py              # offline: scripted model and judge
    python examples/langchain_agent_guarded.py --decline    # the operator declines the annotate

The agent is a real `create_agent` graph; its model is LangChain's offline fake chat model,
scripted with the tool calls in `kitchen_agent_common.PLAN` (swap in any chat model, e.g.
`init_chat_model("openai:gpt-5")`, for a real one). `GuardMiddleware` judges every tool call,
whatever the tool (those given here, or an MCP server's tools loaded later with
langchain-mcp-adapters): lighting the stove under the towel is answered with an error
ToolMessage stating the consequence, and the tool never runs; moving the towel is annotated,
so the operator is asked first. Every decision and approval lands in the audit log.
"""

from __future__ import annotations

import sys
from typing import Any

from kitchen_agent_common import (
    FINAL,
    PLAN,
    TASK,
    TOOLS,
    Operator,
    build_guard,
    camera,
    parser,
    show,
)
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage

from guard.middleware import GuardMiddleware


class ScriptedChatModel(GenericFakeChatModel):
    """LangChain's fake chat model; a script has no use for the tool schemas it is bound to."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def scripted_model() -> ScriptedChatModel:
    turns = [AIMessage(content="", tool_calls=[{"name": n, "args": a, "id": f"call_{i}"}])
             for i, (n, a) in enumerate(PLAN, 1)]
    return ScriptedChatModel(messages=iter([*turns, AIMessage(FINAL)]))


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    with build_guard(args) as guard:
        agent = create_agent(
            scripted_model(),
            tools=TOOLS,
            system_prompt="You drive a kitchen robot.",
            # first in the list: the outermost wrapper, so it sees every call before the rest
            middleware=[GuardMiddleware(guard, frames=camera(), approve=Operator(args.decline))],
        )
        state = agent.invoke({"messages": [("user", TASK)]})

        calls: dict[str, tuple[str, Any]] = {}
        for message in state["messages"]:
            for call in getattr(message, "tool_calls", None) or []:
                calls[call["id"]] = (call["name"], call["args"])
            if isinstance(message, ToolMessage):
                show(*calls[message.tool_call_id], message.content)
        print(f"agent: {state['messages'][-1].content}")
        print(f"audit log: {guard.audit.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
