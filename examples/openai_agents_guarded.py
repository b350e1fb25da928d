"""An OpenAI Agents SDK agent whose tools are guarded by a tool input guardrail.

    python examples/openai_agents_guarded.py              # offline: scripted model and judge
    python examples/openai_agents_guarded.py --decline    # the operator declines the annotate

The agent is a real `agents.Agent` run by the real `Runner`; its model is the SDK's offline
`agents.testing.ScriptedModel`, which asks for the calls in `kitchen_agent_common.PLAN` (swap in
any model, e.g. `Agent(model="gpt-5")`, for a real one). `guard_agent` puts the guard's
guardrail on every function tool: lighting the stove under the towel is vetoed and the model
reads the consequence instead of a result; moving the towel is annotated, so the operator is
asked first. Every decision and approval lands in the audit log.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from agents import Agent, RunConfig, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
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

from guard.middleware.openai_agents import guard_agent


def scripted_model() -> ScriptedModel:
    steps: list[Any] = [[function_call(name, args, call_id=f"call_{i}")]
                        for i, (name, args) in enumerate(PLAN, 1)]
    return ScriptedModel([*steps, [assistant_message(FINAL)]])


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    with build_guard(args) as guard:
        model = scripted_model()
        agent = Agent(name="kitchen robot", instructions="You drive a kitchen robot.",
                      model=model, tools=[function_tool(fn) for fn in TOOLS])
        guard_agent(agent, guard, frames=camera(), approve=Operator(args.decline))
        # tracing off: the run stays offline (the SDK exports traces to OpenAI by default)
        result = asyncio.run(Runner.run(agent, TASK, run_config=RunConfig(tracing_disabled=True)))

        calls: dict[str, tuple[str, Any]] = {}
        for item in model.calls[-1].input if model.calls else []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call":
                calls[item["call_id"]] = (item["name"], item["arguments"])
            elif item.get("type") == "function_call_output":
                show(*calls[item["call_id"]], item["output"])
        print(f"agent: {result.final_output}")
        print(f"audit log: {guard.audit.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
