"""Message types for replay, without a ROS install: a rosbags typestore and proposal parsing.

`guard_interfaces/msg/ActionProposal` is registered from its .msg text (kept here, identical to
`ros2_ws/src/guard_interfaces/msg/ActionProposal.msg` without comments; a test checks that), so
neither a ROS build nor the ros2_ws folder is needed to read bags that carry it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from guard.types import ActionProposal

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


def _label(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text not in LABELS:
        raise ProposalError(f"label must be 'safe' or 'unsafe', got {value!r}")
    return text


def _arguments(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ProposalError(f"arguments are not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ProposalError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def proposal_from_json(
    data: Any, *, default_id: str, stamp: float
) -> tuple[ActionProposal, str | None]:
    """A proposal and its optional label from the JSON form (std_msgs/String, JSONL).

    `data` is a JSON object text or an already parsed object with "name" and optionally
    "id", "description", "arguments" (object or JSON text) and "label" ("safe"/"unsafe").

    Raises:
        ProposalError: not a JSON object, no name, bad arguments or label.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ProposalError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProposalError(f"a proposal must be a JSON object, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ProposalError("a proposal needs a non-empty string 'name'")
    pid = data.get("id")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ProposalError(f"description must be a string, got {type(description).__name__}")
    label = _label(data.get("label"))
    proposal = ActionProposal(
        id=str(pid) if pid not in (None, "") else default_id,
        name=name,
        description=description,
        arguments=_arguments(data.get("arguments")),
        stamp=stamp,
    )
    return proposal, label


def proposal_from_msg(msg: Any, *, default_id: str, stamp: float) -> ActionProposal:
    """A proposal from a deserialized guard_interfaces/msg/ActionProposal.

    Raises:
        ProposalError: no name, or arguments_json that is not a JSON object.
    """
    name = str(getattr(msg, "name", "") or "")
    if not name.strip():
        raise ProposalError("ActionProposal has an empty name")
    return ActionProposal(
        id=str(getattr(msg, "id", "") or "") or default_id,
        name=name,
        description=str(getattr(msg, "description", "") or ""),
        arguments=_arguments(getattr(msg, "arguments_json", "")),
        stamp=stamp,
    )


__all__ = [
    "ACTION_PROPOSAL",
    "ACTION_PROPOSAL_MSG",
    "COMPRESSED_IMAGE",
    "IMAGE",
    "IMAGE_TYPES",
    "PROPOSAL_TYPES",
    "STRING",
    "ProposalError",
    "proposal_from_json",
    "proposal_from_msg",
    "typestore",
    "typestore_from_definition",
]
