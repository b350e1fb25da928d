"""The pydantic-ai adapter: a real `Agent` whose model is pydantic-ai's own `FunctionModel`
(scripted tool calls, offline), every tool behind `GuardCapability` or `guard_toolset`,
annotate mapped to an approval callback or to pydantic-ai's deferred tool approval."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults
from pydantic_ai.toolsets import FunctionToolset

from guard.errors import ActionVetoed
from guard.middleware import GuardCapability, guard_toolset
from guard.middleware.pydantic_ai_tools import METADATA_KEY
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


class Script:
    """A `FunctionModel` function: one tool call per turn (ids call_1, ...), then "done";
    keeps the parts each request brought back, so a test can read what the model saw."""

    def __init__(self, *calls: tuple[str, dict[str, Any]]) -> None:
        self.calls = list(calls)
        self.seen: list[Any] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        if isinstance(last, ModelRequest):
            self.seen.extend(p for p in last.parts
                             if isinstance(p, (ToolReturnPart, RetryPromptPart)))
        turn = sum(isinstance(m, ModelResponse) for m in messages)
        if turn < len(self.calls):
            name, args = self.calls[turn]
            return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=f"call_{turn + 1}")])
        return ModelResponse(parts=[TextPart("done")])


def agent_for(robot: Robot, script: Script, *capabilities: Any, **kwargs: Any) -> Agent[Any, Any]:
    return Agent(FunctionModel(script), tools=[robot.move_to, robot.turn_on_stove,
                                               robot.move_towel],
                 capabilities=list(capabilities), **kwargs)


@pytest.fixture
def guard(audit_path):
    g = make_guard(audit_path)
    yield g
    g.close()


def test_a_veto_is_a_failed_tool_result_with_the_consequence(guard, audit_path):
    robot, script = Robot(), Script(("turn_on_stove", {"burner": 2}))
    result = agent_for(robot, script, GuardCapability(guard, frames=camera())).run_sync("Boil.")
    assert robot.runs == [] and result.output == "done"
    (part,) = script.seen
    assert isinstance(part, ToolReturnPart) and part.outcome == "failed"
    body = json.loads(str(part.content))
    assert body["error"] == "vetoed_by_safety_guard"
    assert body["hazards"][0]["consequence"] == CONSEQUENCE
    (record,) = decisions_for(audit_path, "turn_on_stove")
    assert record["decision"]["verdict"] == "veto" and record["proposal"]["id"] == "call_1"
    assert record["proposal"]["description"] == "Light one burner of the stove."


def test_an_allowed_call_runs(guard, audit_path):
    robot, script = Robot(), Script(("move_to", {"place": "sink"}))
    agent_for(robot, script, GuardCapability(guard, frames=camera())).run_sync("Go.")
    assert robot.runs == [("move_to", {"place": "sink"})]
    assert script.seen[0].content == "arrived at the sink"
    assert decisions_for(audit_path, "move_to")[0]["decision"]["verdict"] == "allow"


@pytest.mark.parametrize("answer", [True, False])
def test_annotate_asks_the_approval_callback(guard, audit_path, answer):
    robot, script, approvals = Robot(), Script(("move_towel", {"target": "sink"})), Approvals(
        answer)
    agent_for(robot, script,
              GuardCapability(guard, frames=camera(), approve=approvals)).run_sync("Tidy.")
    assert [p.name for _, p in approvals.asked] == ["move_towel"]
    assert robot.names() == (["move_towel"] if answer else [])
    assert (script.seen[0].outcome == "failed") is (not answer)
    assert [r["approved"] for r in records(audit_path, "approval")] == [answer]


def test_on_veto_retry_and_raise(guard):
    robot, script = Robot(), Script(("turn_on_stove", {"burner": 2}))
    agent_for(robot, script,
              GuardCapability(guard, frames=camera(), on_veto="retry")).run_sync("Boil.")
    (part,) = script.seen
    assert part.outcome == "retried" and CONSEQUENCE in str(part.content)  # a ModelRetry
    with pytest.raises(ActionVetoed):
        agent_for(robot, Script(("turn_on_stove", {"burner": 2})),
                  GuardCapability(guard, frames=camera(), on_veto="raise")).run_sync("Boil.")
    assert robot.runs == []


def test_a_camera_that_fails_is_a_veto(guard, audit_path):
    robot, script = Robot(), Script(("move_to", {"place": "sink"}))
    agent_for(robot, script, GuardCapability(guard, frames=broken_camera)).run_sync("Go.")
    assert robot.runs == [] and script.seen[0].outcome == "failed"
    assert decisions_for(audit_path, "move_to")[0]["decision"]["status"] == "error"


def test_tools_and_toolsets_added_after_the_capability_are_guarded(guard, audit_path):
    robot, script = Robot(), Script(("turn_on_stove", {"burner": 1}), ("move_to", {"place": "x"}))
    agent = Agent(FunctionModel(script), capabilities=[GuardCapability(guard, frames=camera())])
    agent.tool_plain(robot.turn_on_stove)  # registered after the capability was built
    later = FunctionToolset([robot.move_to])  # a toolset given to this run only
    agent.run_sync("Boil.", toolsets=[later])
    assert robot.runs == [("move_to", {"place": "x"})]
    assert decisions_for(audit_path, "turn_on_stove")[0]["decision"]["verdict"] == "veto"
    assert decisions_for(audit_path, "move_to")[0]["decision"]["verdict"] == "allow"


def test_guard_toolset_guards_that_toolset(guard):
    robot, script = Robot(), Script(("turn_on_stove", {"burner": 1}))
    toolset = guard_toolset(FunctionToolset([robot.turn_on_stove]), guard, frames=camera())
    Agent(FunctionModel(script), toolsets=[toolset]).run_sync("Boil.")
    assert robot.runs == [] and script.seen[0].outcome == "failed"
    with pytest.raises(ValueError, match="approve"):
        guard_toolset(FunctionToolset([]), guard, approve="later")  # type: ignore[arg-type]


class Camera:
    """A frame source that can be unplugged between runs."""

    def __init__(self) -> None:
        self.source: Any = camera()

    def __call__(self) -> Any:
        return self.source()


def test_deferred_approval_ends_the_run_and_the_approved_call_is_judged_again(
        guard, audit_path):
    robot, script, cam = Robot(), Script(("move_towel", {"target": "sink"})), Camera()
    agent = agent_for(robot, script, GuardCapability(guard, frames=cam, approve="defer"),
                      output_type=[str, DeferredToolRequests])
    first = agent.run_sync("Tidy.")
    assert robot.runs == []
    requests = first.output
    assert isinstance(requests, DeferredToolRequests)
    (call,) = requests.approvals
    assert call.tool_name == "move_towel"
    shown = requests.metadata[call.tool_call_id][METADATA_KEY]
    assert shown["decision"]["verdict"] == "annotate" and shown["decision"]["hazards"]

    # A person approves; the call is judged again on resume and now runs.
    approved = DeferredToolResults(approvals={call.tool_call_id: True})
    agent.run_sync(message_history=first.all_messages(), deferred_tool_results=approved)
    assert robot.names() == ["move_towel"]
    (approval,) = records(audit_path, "approval")
    assert approval["approved"] is True and approval["by"] == "deferred_tool_results"
    assert [r["decision"]["verdict"] for r in decisions_for(audit_path, "move_towel")] == [
        "annotate", "annotate"]

    # The same approval replayed after the camera died: the re-judgement vetoes it.
    robot.runs.clear()
    cam.source = broken_camera
    agent.run_sync(message_history=first.all_messages(), deferred_tool_results=approved)
    assert robot.runs == []
    assert decisions_for(audit_path, "move_towel")[-1]["decision"]["status"] == "error"
