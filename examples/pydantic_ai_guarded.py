"""A pydantic-ai agent whose every tool is behind the guard (`GuardCapability`).

    python examples/pydantic_ai_guarded.py              # offline: scripted model and judge
    python examples/pydantic_ai_guarded.py --defer      # annotate -> deferred tool approval
    python examples/pydantic_ai_guarded.py --decline    # the operator declines the annotate

The agent is a real `pydantic_ai.Agent`; its model is pydantic-ai's offline `FunctionModel`,
scripted with the tool calls in `kitchen_agent_common.PLAN` (swap in any model, e.g.
`Agent("openai:gpt-5")`, for a real one). The capability wraps all of the agent's tools on
every run: lighting the stove under the towel is vetoed (the model reads a failed tool result
stating the consequence; the tool never runs); moving the towel is annotated, so the operator
is asked, either during the run (a callback) or, with --defer, through pydantic-ai's deferred
tools: the run ends with `DeferredToolRequests`, the operator answers, and a second run resumes
with `DeferredToolResults` (the approved call is judged again against the latest frame).
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
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolDenied

from guard.middleware import GuardCapability
from guard.middleware.gate import declined_message
from guard.middleware.pydantic_ai_tools import METADATA_KEY
from guard.types import ActionProposal, Decision


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The next call of PLAN (one per turn), then the final answer."""
    turn = sum(isinstance(m, ModelResponse) for m in messages)
    if turn < len(PLAN):
        name, args = PLAN[turn]
        return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=f"call_{turn + 1}")])
    return ModelResponse(parts=[TextPart(FINAL)])


def transcript(messages: list[ModelMessage]) -> None:
    calls: dict[str, tuple[str, Any]] = {}
    for message in messages:
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                calls[part.tool_call_id] = (part.tool_name, part.args)
            elif isinstance(message, ModelRequest) and isinstance(part, ToolReturnPart):
                show(*calls[part.tool_call_id], part.content)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--defer", action="store_true",
                   help="annotated calls end the run for approval (deferred tools)")
    args = p.parse_args(argv)
    operator = Operator(args.decline)
    with build_guard(args) as guard:
        capability = GuardCapability(guard, frames=camera(),
                                     approve="defer" if args.defer else operator)
        agent = Agent(FunctionModel(scripted_model), tools=TOOLS, capabilities=[capability],
                      output_type=[str, DeferredToolRequests])
        result = agent.run_sync(TASK)
        while isinstance(result.output, DeferredToolRequests):
            # The run stopped for a person: show each annotated call's decision and ask.
            answers: dict[str, Any] = {}
            for call in result.output.approvals:
                shown = result.output.metadata[call.tool_call_id][METADATA_KEY]
                decision = Decision.model_validate(shown["decision"])
                proposal = ActionProposal.model_validate(shown["proposal"])
                approved = operator(decision, proposal)
                # a denial tells the model why, as the guard's own refusals do
                answers[call.tool_call_id] = approved or ToolDenied(
                    declined_message(decision, proposal, "the operator declined"))
            result = agent.run_sync(message_history=result.all_messages(),
                                    deferred_tool_results=DeferredToolResults(approvals=answers))
        transcript(result.all_messages())
        print(f"agent: {result.output}")
        print(f"audit log: {guard.audit.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
