"""Message types for replay, without a ROS install: a rosbags typestore and proposal parsing.

`guard_interfaces/msg/ActionProposal` is registered from its .msg text (kept here, identical to
`ros2_ws/src/guard_interfaces/msg/ActionProposal.msg` without comments; a test checks that), so
neither a ROS build nor the ros2_ws folder is needed to read bags that carry it.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

from guard.types import MAX_ARGUMENT_DEPTH, ActionProposal

ACTION_PROPOSAL = "guard_interfaces/msg/ActionProposal"
ACTION_PROPOSAL_MSG = """\
std_msgs/Header header
string id
string name
string description
string arguments_json
"""
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"

IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
PROPOSAL_TYPES = (ACTION_PROPOSAL, STRING)
LABELS = ("safe", "unsafe")


class ProposalError(ValueError):
    """A proposal message that cannot be judged as it is (its text says why)."""


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The ROS 2 Jazzy typestore of rosbags plus guard_interfaces/msg/ActionProposal."""
    from guard._deps import require

    require("rosbags", "guard replay of rosbag2/MCAP episodes")
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg(ACTION_PROPOSAL_MSG, ACTION_PROPOSAL))
    return store


def typestore_from_definition(msgtype: str, definition: str) -> Any:
    """A typestore that reads `msgtype` as the bag itself defines it (ros2msg text).

    Used when a bag's ActionProposal definition hashes differently from ours (another version
    of the message): the fields replay needs are read by name either way.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg(definition, msgtype))
    return store


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


def _proposal(**fields: Any) -> ActionProposal:
    """The proposal, with the type's own validation failures as a one-line ProposalError."""
    try:
        return ActionProposal(**fields)
    except ValueError as exc:  # pydantic's ValidationError: several lines, one reason
        errors = getattr(exc, "errors", None)
        reason = str(errors()[0].get("msg", exc)) if callable(errors) and errors() else str(exc)
        raise ProposalError(" ".join(printable(reason).split())) from None


def _label(value: Any) -> str | None:
    if value is None:
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in LABELS:
        got = repr(printable(value, 60)) if isinstance(value, str) else type(value).__name__
        raise ProposalError(f"label must be 'safe' or 'unsafe', got {got}")
    return text


def _arguments(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ProposalError(f"arguments are not valid JSON ({exc})") from None
        except RecursionError:
            raise ProposalError("arguments are nested too deeply to parse") from None
    if not isinstance(value, dict):
        raise ProposalError(f"arguments must be a JSON object, got {type(value).__name__}")
    _check_arguments(value)
    return value


def proposal_from_json(
    data: Any, *, default_id: str, stamp: float
) -> tuple[ActionProposal, str | None]:
    """A proposal and its optional label from the JSON form (std_msgs/String, JSONL).

    `data` is a JSON object text or an already parsed object with "name" and optionally
    "id", "description", "arguments" (object or JSON text) and "label" ("safe"/"unsafe").

    Raises:
        ProposalError: not a JSON object, no name, bad arguments or label, text that is not
            valid Unicode, arguments nested deeper than MAX_ARGUMENT_DEPTH.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ProposalError(f"not valid JSON ({exc})") from None
        except RecursionError:
            raise ProposalError("nested too deeply to parse as JSON") from None
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
        arguments=_arguments(data.get("arguments")),
        stamp=stamp,
    )
    return proposal, label


def proposal_from_msg(msg: Any, *, default_id: str, stamp: float) -> ActionProposal:
    """A proposal from a deserialized guard_interfaces/msg/ActionProposal.

    Raises:
        ProposalError: no name, arguments_json that is not a JSON object (or is nested
            deeper than MAX_ARGUMENT_DEPTH), text that is not valid Unicode.
    """
    name = str(getattr(msg, "name", "") or "")
    if not name.strip():
        raise ProposalError("ActionProposal has an empty name")
    pid = str(getattr(msg, "id", "") or "") or default_id
    description = str(getattr(msg, "description", "") or "")
    for what, text in (("id", pid), ("name", name), ("description", description)):
        _check_text(what, text)
    return _proposal(
        id=pid,
        name=name,
        description=description,
        arguments=_arguments(getattr(msg, "arguments_json", "")),
        stamp=stamp,
    )


__all__ = [
    "ACTION_PROPOSAL",
    "ACTION_PROPOSAL_MSG",
    "COMPRESSED_IMAGE",
    "IMAGE",
    "IMAGE_TYPES",
    "MAX_ARGUMENT_DEPTH",
    "PROPOSAL_TYPES",
    "STRING",
    "ProposalError",
    "printable",
    "proposal_from_json",
    "proposal_from_msg",
    "typestore",
    "typestore_from_definition",
]
