"""The OpenAI Agents SDK adapter: a real `Agent` run by the real `Runner`, its model the SDK's
own offline `agents.testing.ScriptedModel` (scripted tool calls, no network), every function
tool behind the guard's tool input guardrail."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import agents
import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.exceptions import ToolInputGuardrailTripwireTriggered
from agents.mcp import MCPServerStdio
from agents.testing import ScriptedModel, assistant_message, function_call

from guard.errors import UsageError
from guard.middleware.openai_agents import guard_agent, guard_tool_input_guardrail
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

OFFLINE = RunConfig(tracing_disabled=True)


@pytest.fixture
def guard(audit_path):
    g = make_guard(audit_path)
    yield g
    g.close()


def agent_with(robot: Robot, model: ScriptedModel, *names: str) -> Agent[Any]:
    tools = [function_tool(getattr(robot, n)) for n in names or
             ("move_to", "turn_on_stove", "move_towel")]
    return Agent(name="kitchen robot", model=model, tools=tools)


def script(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> ScriptedModel:
    """One tool call, then a final answer."""
    return ScriptedModel([[function_call(name, arguments, call_id=call_id)],
                          [assistant_message("done")]])


def tool_output(model: ScriptedModel, call_id: str = "call_1") -> str:
    """What the model was given back for `call_id` on its next turn."""
    items = model.last_call.input if model.last_call else []
    outputs = [i["output"] for i in items
               if isinstance(i, dict) and i.get("type") == "function_call_output"
               and i.get("call_id") == call_id]
    assert len(outputs) == 1, items
    return str(outputs[0])


def run(agent: Agent[Any]) -> Any:
    return asyncio.run(Runner.run(agent, "Boil water for tea.", run_config=OFFLINE))


def test_a_veto_rejects_the_call_and_the_model_reads_the_consequence(guard, audit_path):
    robot, model = Robot(), script("turn_on_stove", {"burner": 2})
    result = run(guard_agent(agent_with(robot, model), guard, frames=camera()))
    assert robot.runs == []  # the tool never ran
    assert result.final_output == "done"  # the run went on: the model could re-plan
    body = json.loads(tool_output(model))
    assert body["error"] == "vetoed_by_safety_guard"
    assert body["hazards"][0]["consequence"] == CONSEQUENCE
    (record,) = decisions_for(audit_path, "turn_on_stove")
    assert record["decision"]["verdict"] == "veto" and record["proposal"]["id"] == "call_1"
    # the judge read the tool's own description and the model's arguments
    assert record["proposal"]["description"] == "Light one burner of the stove."
    assert record["proposal"]["arguments"] == {"burner": 2}
    (gr,) = result.tool_input_guardrail_results
    assert gr.output.output_info["outcome"] == "veto"


def test_an_allowed_call_runs(guard, audit_path):
    robot, model = Robot(), script("move_to", {"place": "sink"})
    run(guard_agent(agent_with(robot, model), guard, frames=camera()))
    assert robot.runs == [("move_to", {"place": "sink"})]
    assert tool_output(model) == "arrived at the sink"
    (record,) = decisions_for(audit_path, "move_to")
    assert record["decision"]["verdict"] == "allow"


@pytest.mark.parametrize("answer", [True, False])
def test_annotate_asks_for_approval(guard, audit_path, answer):
    robot, model = Robot(), script("move_towel", {"target": "counter"})
    approvals = Approvals(answer)
    run(guard_agent(agent_with(robot, model), guard, frames=camera(), approve=approvals))
    assert [p.name for _, p in approvals.asked] == ["move_towel"]
    assert robot.names() == (["move_towel"] if answer else [])
    if not answer:
        assert json.loads(tool_output(model))["error"] == "declined_by_operator"
    (approval,) = records(audit_path, "approval")
    assert approval["approved"] is answer and approval["tool"] == "move_towel"


def test_on_veto_raise_halts_the_run(guard):
    robot, model = Robot(), script("turn_on_stove", {"burner": 2})
    agent = guard_agent(agent_with(robot, model), guard, frames=camera(), on_veto="raise")
    with pytest.raises(ToolInputGuardrailTripwireTriggered) as info:
        run(agent)
    assert robot.runs == []
    decision = info.value.output.output_info["decision"]
    assert decision["verdict"] == "veto" and decision["hazards"][0]["consequence"] == CONSEQUENCE


def test_a_camera_that_fails_is_a_veto(guard, audit_path):
    robot, model = Robot(), script("move_to", {"place": "sink"})
    run(guard_agent(agent_with(robot, model), guard, frames=broken_camera))
    assert robot.runs == []
    assert json.loads(tool_output(model))["status"] == "error"
    (record,) = decisions_for(audit_path, "move_to")
    assert record["decision"]["verdict"] == "veto" and record["decision"]["status"] == "error"


def test_tools_added_later_are_guarded_by_a_second_call_once(guard, audit_path):
    robot, model = Robot(), script("turn_on_stove", {"burner": 1})
    agent = guard_agent(agent_with(robot, model, "move_to"), guard, frames=camera())
    agent.tools.append(function_tool(robot.turn_on_stove))
    guard_agent(agent, guard, frames=camera())
    assert [len(t.tool_input_guardrails) for t in agent.tools] == [1, 1]  # never twice
    run(agent)
    assert robot.runs == [] and len(decisions_for(audit_path, "turn_on_stove")) == 1


def test_handoffs_and_mcp_servers_get_the_guardrail(guard):
    class Server:  # what guard_agent touches on an MCP server: its guardrail list
        tool_input_guardrails = None

    robot, model = Robot(), ScriptedModel([])
    helper = agent_with(robot, model, "turn_on_stove")
    server = Server()
    main = Agent(name="main", model=model, handoffs=[helper], mcp_servers=[server])  # type: ignore[list-item]
    guard_agent(main, guard)
    assert helper.tools[0].tool_input_guardrails
    assert server.tool_input_guardrails and getattr(
        server.tool_input_guardrails[0], "embodied_guard", None) is not None


def test_a_tool_that_takes_no_guardrail_is_refused(guard):
    hosted_mcp = agents.HostedMCPTool(tool_config={
        "type": "mcp", "server_label": "robot", "server_url": "http://robot.invalid/mcp"})
    agent = Agent(name="robot", model=ScriptedModel([]), tools=[hosted_mcp])
    with pytest.raises(UsageError, match="HostedMCPTool"):
        guard_agent(agent, guard)
    guard_agent(agent, guard, unguarded=[hosted_mcp.name])  # accepted when named


def test_the_guardrail_alone_on_one_tool(guard):
    robot, model = Robot(), script("turn_on_stove", {"burner": 3})
    tool = function_tool(robot.turn_on_stove,
                         tool_input_guardrails=[guard_tool_input_guardrail(guard,
                                                                           frames=camera())])
    run(Agent(name="robot", model=model, tools=[tool]))
    assert robot.runs == []
    with pytest.raises(ValueError, match="on_veto"):
        guard_tool_input_guardrail(guard, on_veto="ignore")  # type: ignore[arg-type]


ROBOT_SERVER = Path(__file__).resolve().parents[1] / "examples" / "mcp_proxy" / "robot_server.py"


def test_a_real_mcp_servers_tools_are_guarded(guard, audit_path, tmp_path):
    """The robot's MCP server over stdio (the SDK's own MCP client): its vetoed tool never
    reaches it, the allowed one does, and the judge reads the server's tool description."""
    calls = tmp_path / "calls.jsonl"
    model = ScriptedModel([[function_call("turn_on_stove", {"burner": 2}, call_id="call_1")],
                           [function_call("move_base", {"x": 1, "y": 2}, call_id="call_2")],
                           [assistant_message("done")]])

    async def go() -> None:
        params = {"command": sys.executable, "args": [str(ROBOT_SERVER), "--calls", str(calls)]}
        async with MCPServerStdio(params=params, name="robot") as server:
            agent = guard_agent(Agent(name="robot", model=model, mcp_servers=[server]), guard,
                                frames=camera())
            await Runner.run(agent, "Boil water for tea.", run_config=OFFLINE)

    asyncio.run(go())
    ran = [json.loads(line)["tool"] for line in calls.read_text().splitlines()]
    assert ran == ["move_base"]  # the stove call never reached the robot
    assert CONSEQUENCE in tool_output(model, "call_1")
    (stove,) = decisions_for(audit_path, "turn_on_stove")
    assert stove["decision"]["verdict"] == "veto"
    assert stove["proposal"]["description"] == "Turn on one burner of the stove."
    assert decisions_for(audit_path, "move_base")[0]["decision"]["verdict"] == "allow"
