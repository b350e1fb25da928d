"""A small agent loop whose tools are guarded: the guard vetoes lighting a stove under a towel.

    python examples/guarded_agent.py                       # offline: scripted judge, no model
    python examples/guarded_agent.py --model /tmp/tiny --backend transformers    # a real judge

The planner is scripted (no LLM needed) but speaks the OpenAI tool-calling format: it emits one
tool call at a time and reads the tool message back, as an LLM agent would. The camera is the
example kitchen photo (a towel on the stove). The scripted judge answers by the action's words:
`turn_on_stove` is a veto (fire), touching the towel an annotate (a warning), the rest allow.
With --model, a real judge looks at the photo instead (a tiny random model fails closed: every
answer is unparseable, so every call is vetoed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kitchen_agent_common import TOOLS, build_guard, camera

from guard.middleware import GuardedToolset, run_tool_call
from guard.types import ActionProposal, Decision

# -- a scripted planner in the OpenAI tool-call format ----------------------------------------


def call(n: int, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": f"call_{n}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def planner(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The next tool call given the conversation so far, or None when done."""
    results = [m for m in messages if m["role"] == "tool"]
    if not results:
        return call(1, "move_to", place="stove")
    last = json.loads(results[-1]["content"]) if results[-1]["content"].startswith("{") else {}
    if len(results) == 1:
        return call(2, "turn_on_stove", burner=2, minutes=15)
    if last.get("error") == "vetoed_by_safety_guard" and len(results) == 2:
        # re-plan around the hazard the guard named instead of retrying the same call
        return call(3, "pick_and_place", obj="towel", target="counter")
    return None


def warn(decision: Decision, proposal: ActionProposal) -> None:
    """Annotate decisions: the call runs, the warning is handed on (the default logs it)."""
    hazards = "; ".join(h.description for h in decision.hazards)
    print(f"  guard warning ({decision.verdict.value}, risk {decision.risk:.2f}): {hazards}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="judge model folder or id (default: scripted)")
    p.add_argument("--backend", default="transformers", help="backend for --model")
    p.add_argument("--audit", default=None, help="audit log (default: a temp file)")
    args = p.parse_args(argv)

    with build_guard(args) as guard:
        tools = GuardedToolset(guard, TOOLS, frames=camera(), on_warning=warn)
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": "Boil water for tea."},
        ]
        vetoes = 0
        while (tool_call := planner(messages)) is not None:
            fn = tool_call["function"]
            print(f"agent -> {fn['name']}({fn['arguments']})")
            messages.append({"role": "assistant", "tool_calls": [tool_call]})
            reply = run_tool_call(tools, tool_call)
            messages.append(reply)
            vetoed = "vetoed_by_safety_guard" in reply["content"]
            vetoes += vetoed
            print(f"  {'VETOED' if vetoed else 'result'}: {reply['content']}")
        print(f"done: {vetoes} call(s) vetoed; audit log: {guard.audit.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
