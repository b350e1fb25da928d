"""OpenAI-style tool calls (a name and a JSON arguments string) through a `GuardedToolset`.

    for call in response.choices[0].message.tool_calls or []:
        messages.append(run_tool_call(tools, call))    # {"role": "tool", ...} for the next turn

Accepts Chat Completions tool calls (`{"id", "type": "function", "function": {"name",
"arguments"}}`), Responses API items (`{"type": "function_call", "call_id", "name",
"arguments"}`), as dicts or as the `openai` SDK's objects; the reply has the matching shape.
No `openai` package is needed. Tool calls become proposals in `guard.wire.proposals` (the
adapter every front end shares); `ToolCall`, `parse_tool_call` and `proposal_from_tool_call`
are re-exported here.

The model sees every outcome as the tool's output, so it can re-plan: the result, a veto (with
the hazards and rationale), or an error for a call that could not be made. Arguments that are
not a JSON object are refused before any tool runs, and the refusal is audited.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from guard.errors import ActionVetoed, shown_name
from guard.middleware.decorator import jsonable
from guard.middleware.toolset import GuardedToolset
from guard.types import ActionProposal, Status
from guard.wire.proposals import ToolCall, parse_tool_call, proposal_from_tool_call

_MAX_RAW = 1000


def veto_message(exc: ActionVetoed) -> str:
    """What the model reads when the guard vetoed its call: JSON it can re-plan from."""
    decision = exc.decision
    body = {
        "error": "vetoed_by_safety_guard",
        "tool": shown_name(exc.proposal.name),
        "status": decision.status.value,
        "risk": round(decision.risk, 3),
        "hazards": [
            {"category": h.category, "description": h.description, "consequence": h.consequence}
            for h in decision.hazards
        ],
        "rationale": decision.rationale,
        "note": "The action was not executed. Do not retry it unchanged.",
    }
    return json.dumps(body, ensure_ascii=False)


def _error(kind: str, call: ToolCall, detail: str) -> str:
    return json.dumps({"error": kind, "tool": shown_name(call.name), "detail": detail},
                      ensure_ascii=False)


def _content(result: Any) -> str:
    if isinstance(result, str):
        return result
    return json.dumps(jsonable(result), ensure_ascii=False)


def _reply(call: ToolCall, content: str) -> dict[str, Any]:
    if call.api == "responses":
        return {"type": "function_call_output", "call_id": call.id, "output": content}
    return {"role": "tool", "tool_call_id": call.id, "content": content}


def _prepare(toolset: GuardedToolset, call: ToolCall) -> str | None:
    """An error reply text when the call cannot be made, else None."""
    if call.error is not None or call.arguments is None:
        # No tool runs; the refusal is still a decision in the audit log.
        proposal = ActionProposal(
            name=call.name or "?", arguments={"raw_arguments": call.raw_arguments[:_MAX_RAW]}
        )
        toolset.guard.reject(proposal, Status.INVALID_INPUT, f"tool call: {call.error}")
        return _error("invalid_arguments", call, call.error or "no arguments")
    if call.name not in toolset:
        return _error("unknown_tool", call, f"tools are: {sorted(toolset)}")
    try:
        inspect.signature(toolset[call.name]).bind(**call.arguments)
    except TypeError as exc:
        return _error("invalid_arguments", call, str(exc))
    return None


def run_tool_call(toolset: GuardedToolset, tool_call: Any) -> dict[str, Any]:
    """Judge and run one tool call; return the reply message for the model's next turn."""
    call = parse_tool_call(tool_call)
    error = _prepare(toolset, call)
    if error is not None:
        return _reply(call, error)
    try:
        result = toolset.call(call.name, call.arguments)
    except ActionVetoed as exc:
        return _reply(call, veto_message(exc))
    return _reply(call, _content(result))


async def arun_tool_call(toolset: GuardedToolset, tool_call: Any) -> dict[str, Any]:
    """`run_tool_call` for async agents (async tools awaited, sync ones on a thread)."""
    call = parse_tool_call(tool_call)
    error = _prepare(toolset, call)
    if error is not None:
        return _reply(call, error)
    try:
        result = await toolset.acall(call.name, call.arguments)
    except ActionVetoed as exc:
        return _reply(call, veto_message(exc))
    return _reply(call, _content(result))


__all__ = [
    "ToolCall",
    "arun_tool_call",
    "parse_tool_call",
    "proposal_from_tool_call",
    "run_tool_call",
    "veto_message",
]
