"""The LangChain v1 agent middleware: a real `create_agent` graph whose model is LangChain's
own fake chat model scripted with tool calls (offline), every tool call behind
`GuardMiddleware`, including tools the agent only learns about after it was built."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool

from guard.errors import ActionVetoed
from guard.middleware import GuardMiddleware
from tests.adapters_common import (
    CONSEQUENCE,
    Approvals,
    Robot,
    broken_camera,
    camera,
    decisions_for,
    make_guard,
    records,
)


class ToolCallingFake(GenericFakeChatModel):
    """LangChain's fake chat model; `create_agent` binds tools, which a script ignores."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def model(*calls: tuple[str, dict[str, Any]]) -> ToolCallingFake:
    """The agent's model: one AI message per tool call (ids call_1, ...), then "done"."""
    messages = [
        AIMessage(content="", tool_calls=[{"name": n, "args": a, "id": f"call_{i}"}])
        for i, (n, a) in enumerate(calls, 1)
    ]
    return ToolCallingFake(messages=iter([*messages, AIMessage(content="done")]))


def tools(robot: Robot, *names: str) -> list[BaseTool]:
    return [StructuredTool.from_function(getattr(robot, n)) for n in names]


def tool_messages(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


@pytest.fixture
def guard(audit_path):
    g = make_guard(audit_path)
    yield g
    g.close()


def test_a_veto_answers_with_the_consequence_and_the_tool_never_runs(guard, audit_path):
    robot = Robot()
    agent = create_agent(model(("turn_on_stove", {"burner": 2})),
                         tools=tools(robot, "move_to", "turn_on_stove"),
                         middleware=[GuardMiddleware(guard, frames=camera())])
    state = agent.invoke({"messages": [("user", "Boil water for tea.")]})
    assert robot.runs == []
    (reply,) = tool_messages(state)
    assert reply.status == "error" and reply.tool_call_id == "call_1"
    body = json.loads(str(reply.content))
    assert body["error"] == "vetoed_by_safety_guard"
    assert body["hazards"][0]["consequence"] == CONSEQUENCE
    assert state["messages"][-1].content == "done"  # the model read it and went on
    (record,) = decisions_for(audit_path, "turn_on_stove")
    assert record["decision"]["verdict"] == "veto"
    assert record["proposal"]["description"] == "Light one burner of the stove."


def test_an_allowed_call_runs(guard, audit_path):
    robot = Robot()
    agent = create_agent(model(("move_to", {"place": "sink"})), tools=tools(robot, "move_to"),
                         middleware=[GuardMiddleware(guard, frames=camera())])
    state = agent.invoke({"messages": [("user", "Go to the sink.")]})
    assert robot.runs == [("move_to", {"place": "sink"})]
    (reply,) = tool_messages(state)
    assert reply.status == "success" and reply.content == "arrived at the sink"
    assert decisions_for(audit_path, "move_to")[0]["decision"]["verdict"] == "allow"


@pytest.mark.parametrize("answer", [True, False])
def test_annotate_asks_for_approval(guard, audit_path, answer):
    robot, approvals = Robot(), Approvals(answer)
    agent = create_agent(model(("move_towel", {"target": "counter"})),
                         tools=tools(robot, "move_towel"),
                         middleware=[GuardMiddleware(guard, frames=camera(), approve=approvals)])
    state = agent.invoke({"messages": [("user", "Tidy up.")]})
    assert [p.name for _, p in approvals.asked] == ["move_towel"]
    assert robot.names() == (["move_towel"] if answer else [])
    (reply,) = tool_messages(state)
    assert (reply.status == "error") is (not answer)
    assert [r["approved"] for r in records(audit_path, "approval")] == [answer]


def test_on_veto_raise(guard):
    robot = Robot()
    agent = create_agent(model(("turn_on_stove", {"burner": 2})),
                         tools=tools(robot, "turn_on_stove"),
                         middleware=[GuardMiddleware(guard, frames=camera(), on_veto="raise")])
    with pytest.raises(ActionVetoed) as info:
        agent.invoke({"messages": [("user", "Boil water.")]})
    assert robot.runs == [] and info.value.decision.hazards[0].consequence == CONSEQUENCE


def test_a_camera_that_fails_is_a_veto(guard, audit_path):
    robot = Robot()
    agent = create_agent(model(("move_to", {"place": "sink"})), tools=tools(robot, "move_to"),
                         middleware=[GuardMiddleware(guard, frames=broken_camera)])
    state = agent.invoke({"messages": [("user", "Go to the sink.")]})
    assert robot.runs == [] and tool_messages(state)[0].status == "error"
    assert decisions_for(audit_path, "move_to")[0]["decision"]["status"] == "error"


class LoadedLater(AgentMiddleware):  # type: ignore[type-arg]
    """Tools that exist only at run time, the way an MCP client loads a server's tools:
    shown to the model per call and executed by handing the tool to the next handler."""

    def __init__(self, registry: list[BaseTool]) -> None:
        super().__init__()
        self.registry = registry

    def _by_name(self) -> dict[str, BaseTool]:
        return {t.name: t for t in self.registry}

    async def awrap_model_call(self, request: Any, handler: Callable[..., Any]) -> Any:
        return await handler(request.override(tools=[*request.tools, *self.registry]))

    async def awrap_tool_call(self, request: Any, handler: Callable[..., Any]) -> Any:
        tool = self._by_name().get(request.tool_call["name"])
        return await handler(request.override(tool=tool) if tool else request)


def mcp_like(robot: Robot, names: Iterable[str]) -> list[BaseTool]:
    """Async-only tools, as langchain-mcp-adapters builds them from an MCP server's list."""
    out: list[BaseTool] = []
    for name in names:
        fn = getattr(robot, name)

        async def call(_fn: Callable[..., str] = fn, **kwargs: Any) -> str:
            return _fn(**kwargs)

        out.append(StructuredTool(name=name, description=fn.__doc__ or "",
                                  args_schema=StructuredTool.from_function(fn).args_schema,
                                  coroutine=call))
    return out


def test_tools_loaded_after_the_middleware_and_the_agent_were_built_are_guarded(
        guard, audit_path):
    robot = Robot()
    registry: list[BaseTool] = []
    middleware = GuardMiddleware(guard, frames=camera())  # built first, knows no tools
    agent = create_agent(
        model(("turn_on_stove", {"burner": 2}), ("move_to", {"place": "sink"})),
        tools=tools(robot, "move_towel"),
        middleware=[middleware, LoadedLater(registry)],
    )
    registry.extend(mcp_like(robot, ["turn_on_stove", "move_to"]))  # the server's tools arrive
    state = asyncio.run(agent.ainvoke({"messages": [("user", "Boil water for tea.")]}))
    assert robot.runs == [("move_to", {"place": "sink"})]  # the stove never lit
    vetoed, allowed = tool_messages(state)
    assert vetoed.status == "error" and CONSEQUENCE in str(vetoed.content)
    assert allowed.content == "arrived at the sink"
    assert decisions_for(audit_path, "turn_on_stove")[0]["decision"]["verdict"] == "veto"
    assert decisions_for(audit_path, "move_to")[0]["decision"]["verdict"] == "allow"


def test_async_runs_await_async_frame_sources_and_approvers(guard, audit_path):
    robot = Robot()
    frame_source = camera()
    asked: list[str] = []

    async def frames() -> Any:
        return frame_source()

    async def approve(decision: Any, proposal: Any) -> bool:
        asked.append(proposal.name)
        return True

    agent = create_agent(model(("move_towel", {"target": "sink"})),
                         tools=tools(robot, "move_towel"),
                         middleware=[GuardMiddleware(guard, frames=frames, approve=approve)])
    asyncio.run(agent.ainvoke({"messages": [("user", "Tidy up.")]}))
    assert asked == ["move_towel"] and robot.names() == ["move_towel"]
    assert records(audit_path, "approval")[0]["approved"] is True
