"""Proposals on the wire: ROS messages, JSON text, OpenAI tool calls, LangChain calls.

Every front end turns what arrives into an `ActionProposal` (or, where the guard should
validate and audit it, its mapping) here, so a proposal the node refuses is one replay
refuses too, for the same reason. This module checks what belongs to the wire: JSON that
parses, arguments that are an object, text that is valid Unicode, numbers that are finite.
What a proposal is (a non-blank name, arguments nested at most `MAX_ARGUMENT_DEPTH`) is the
type's own validation (`guard.types.ActionProposal`).

- `guard_interfaces/msg/ActionProposal` (rclpy or rosbags): `proposal_fields_from_msg`
  (the node hands the mapping to the guard) and `proposal_from_msg` (replay);
- `std_msgs/String` JSON and JSONL episodes: `proposal_from_json`, with an optional label;
- OpenAI Chat Completions / Responses tool calls: `parse_tool_call`, `proposal_from_tool_call`;
- an in-process call (LangChain tools, decorated functions): `proposal_from_call`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from guard.types import MAX_ARGUMENT_DEPTH, ActionProposal, new_id

LABELS = ("safe", "unsafe")


class ProposalError(ValueError):
    """A proposal that cannot be judged as it arrived (its text says why, in one line)."""


def printable(text: str, limit: int = 200) -> str:
    """`text` made safe to write anywhere (UTF-8 files, a terminal) and short: characters
    UTF-8 cannot hold (lone surrogates) become backslash escapes; longer text is cut."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= limit else safe[:limit] + "..."


def _check_text(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProposalError(
            f"{what} is not valid Unicode (a lone surrogate in '{printable(text, 60)}')"
        ) from None


def _check_arguments(value: Any) -> None:
    """Arguments a JSON writer and the judge can take: finite numbers, text that is valid
    Unicode, and the proposal type's depth bound (`guard.types.MAX_ARGUMENT_DEPTH`), checked
    here without recursion so that no depth of damage reaches a recursive walker."""
    stack: list[tuple[Any, int]] = [(value, 0)]  # levels counted as the type counts them
    while stack:
        item, depth = stack.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            raise ProposalError(f"arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels")
        if isinstance(item, (dict, list)):
            if isinstance(item, dict):
                for key, sub in item.items():
                    _check_text("an argument name", str(key))
                    stack.append((sub, depth + 1))
            else:
                stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, str):
            _check_text("an argument value", item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ProposalError(f"arguments hold a non-finite number ({item})")


def _one_line(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)  # pydantic's ValidationError: several lines
    reason = str(errors()[0].get("msg", exc)) if callable(errors) and errors() else str(exc)
    return " ".join(printable(reason).split())


def _proposal(**fields: Any) -> ActionProposal:
    """The proposal, with the type's own validation failures as a one-line ProposalError."""
    try:
        return ActionProposal(**fields)
    except ValueError as exc:
        raise ProposalError(_one_line(exc)) from None


def _label(value: Any) -> str | None:
    if value is None:
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in LABELS:
        got = repr(printable(value, 60)) if isinstance(value, str) else type(value).__name__
        raise ProposalError(f"label must be 'safe' or 'unsafe', got {got}")
    return text


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise ValueError(f"the name {printable(name, 60)!r} is given twice in one object")
        seen.add(name)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON: a non-finite number")


def loads_json(text: str | bytes) -> Any:
    """JSON text from outside the guard, read as RFC 8259 writes it: a name given twice in one
    object and the constants NaN, Infinity and -Infinity are errors (ValueError). Python's
    reader keeps the last of two names where others keep the first, so a proxy and the guard
    would read two different actions from one request; the constants are no JSON at all.

    Raises:
        ValueError: not JSON, or one of the above (RecursionError: hostile nesting).
    """
    return json.loads(text, object_pairs_hook=_unique_names, parse_constant=_no_constant)


def _loads(text: str | bytes, what: str) -> Any:
    """JSON `text`, or a ProposalError that starts with `what` ("arguments are ", "")."""
    try:
        return loads_json(text)
    except ValueError as exc:
        raise ProposalError(f"{what}not valid JSON ({exc})") from None
    except RecursionError:  # json recurses per level: hostile nesting ends here, in one line
        raise ProposalError(f"{what}nested too deeply to parse") from None


def parse_arguments(value: Any) -> dict[str, Any]:
    """Arguments from JSON object text ('' or None: none) or an already parsed object.

    Raises:
        ProposalError: not JSON, not an object, or holding what `_check_arguments` refuses.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, (str, bytes)):
        if not value.strip():
            return {}
        value = _loads(value, "arguments are ")
    if not isinstance(value, dict):
        raise ProposalError(f"arguments must be a JSON object, got {type(value).__name__}")
    _check_arguments(value)
    return value


def proposal_fields_from_msg(
    msg: Any, *, default_id: str = "", stamp: float | None = None
) -> dict[str, Any]:
    """The `ActionProposal` fields of a `guard_interfaces/msg/ActionProposal`, as a mapping
    for `Guard.check`, which validates it (and audits a refusal with what arrived).

    Args:
        msg: The message (rclpy's, rosbags', or any object with its fields).
        default_id: The id when the message has none ('' lets the type make one).
        stamp: The proposal's time in seconds (None: unknown).

    Raises:
        ProposalError: arguments_json that is not a JSON object, text or arguments a JSON
            writer cannot take.
    """
    pid = str(getattr(msg, "id", "") or "") or default_id
    name = str(getattr(msg, "name", "") or "")
    description = str(getattr(msg, "description", "") or "")
    for what, text in (("id", pid), ("name", name), ("description", description)):
        _check_text(what, text)
    fields: dict[str, Any] = {
        "name": name,
        "description": description,
        "arguments": parse_arguments(getattr(msg, "arguments_json", "")),
        "stamp": stamp,
    }
    if pid:
        fields["id"] = pid
    return fields


def proposal_from_msg(msg: Any, *, default_id: str, stamp: float | None) -> ActionProposal:
    """A proposal from a `guard_interfaces/msg/ActionProposal`.

    Raises:
        ProposalError: what `proposal_fields_from_msg` refuses, or what the type refuses (an
            empty name, arguments nested deeper than MAX_ARGUMENT_DEPTH).
    """
    return _proposal(**proposal_fields_from_msg(msg, default_id=default_id, stamp=stamp))


def proposal_from_json(
    data: Any, *, default_id: str, stamp: float | None
) -> tuple[ActionProposal, str | None]:
    """A proposal and its optional label from the JSON form (std_msgs/String, JSONL).

    `data` is a JSON object text or an already parsed object with "name" and optionally
    "id", "description", "arguments" (object or JSON text) and "label" ("safe"/"unsafe").

    Raises:
        ProposalError: not a JSON object, no name, bad arguments or label, text that is not
            valid Unicode, arguments nested deeper than MAX_ARGUMENT_DEPTH.
    """
    if isinstance(data, (str, bytes)):
        data = _loads(data, "")
    if not isinstance(data, dict):
        raise ProposalError(f"a proposal must be a JSON object, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ProposalError("a proposal needs a non-empty string 'name'")
    pid = data.get("id")
    if isinstance(pid, bool) or not isinstance(pid, (str, int, type(None))):
        raise ProposalError(f"id must be a string or an integer, got {type(pid).__name__}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ProposalError(f"description must be a string, got {type(description).__name__}")
    pid = str(pid) if pid not in (None, "") else default_id
    for what, text in (("id", pid), ("name", name), ("description", description)):
        _check_text(what, text)
    label = _label(data.get("label"))
    proposal = _proposal(
        id=pid,
        name=name,
        description=description,
        arguments=parse_arguments(data.get("arguments")),
        stamp=stamp,
    )
    return proposal, label


def proposal_from_call(
    name: str,
    arguments: dict[str, Any],
    *,
    description: str = "",
    id: str | None = None,
    stamp: float | None = None,
) -> ActionProposal:
    """A proposal for an in-process call (a LangChain tool's input, a parsed tool call): the
    arguments are Python values, made plain JSON by the type.

    Raises:
        ValueError: what the type refuses (an empty name, arguments nested too deep).
    """
    fields: dict[str, Any] = {
        "name": name,
        "description": description,
        "arguments": arguments,
        "stamp": stamp,
    }
    if id:
        fields["id"] = id
    return ActionProposal(**fields)


@dataclass(frozen=True)
class ToolCall:
    """One OpenAI-style tool call, normalised.

    Attributes:
        id: The call's id (`tool_call_id` / `call_id`), echoed in the reply.
        name: The tool name.
        arguments: The parsed arguments, or None when they are not a JSON object.
        raw_arguments: The arguments string as the model wrote it.
        error: Why the arguments could not be used, else None.
        api: "chat" (Chat Completions) or "responses" (Responses API).
    """

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str
    error: str | None = None
    api: Literal["chat", "responses"] = "chat"


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def parse_tool_call(tool_call: Any) -> ToolCall:
    """Normalise a Chat Completions or Responses API tool call (dict or SDK object)."""
    function = _get(tool_call, "function")
    if function is not None:
        api: Literal["chat", "responses"] = "chat"
        call_id, name, raw = (
            _get(tool_call, "id", ""),
            _get(function, "name"),
            _get(function, "arguments", ""),
        )
    else:
        api = "responses"
        call_id = _get(tool_call, "call_id") or _get(tool_call, "id", "")
        name, raw = _get(tool_call, "name"), _get(tool_call, "arguments", "")
    name = str(name or "")
    if isinstance(raw, dict):  # some clients hand over parsed arguments
        return ToolCall(str(call_id or ""), name, raw, json.dumps(raw, default=str), None, api)
    raw = "" if raw is None else str(raw)
    error, arguments = None, None
    try:
        parsed = loads_json(raw) if raw.strip() else {}
    except ValueError as exc:
        error = f"arguments are not valid JSON ({exc})"
    except RecursionError:
        error = "arguments are nested too deeply to parse"
    else:
        if isinstance(parsed, dict):
            arguments = parsed
        else:
            error = f"arguments must be a JSON object, got {type(parsed).__name__}"
    if not name:
        error = "the tool call has no function name"
    return ToolCall(str(call_id or ""), name, arguments, raw, error, api)


def proposal_from_tool_call(tool_call: Any, *, description: str = "") -> ActionProposal:
    """An ActionProposal for an OpenAI-style tool call, to judge it without a toolset.

    Raises:
        ValueError: the call has no name or its arguments are not a JSON object.
    """
    call = parse_tool_call(tool_call)
    if call.error is not None or call.arguments is None:
        raise ValueError(f"tool call {call.name or '?'}: {call.error}")
    return proposal_from_call(
        call.name, call.arguments, description=description, id=call.id or new_id()
    )


__all__ = [
    "LABELS",
    "ProposalError",
    "ToolCall",
    "loads_json",
    "parse_arguments",
    "parse_tool_call",
    "printable",
    "proposal_fields_from_msg",
    "proposal_from_call",
    "proposal_from_json",
    "proposal_from_msg",
    "proposal_from_tool_call",
]
