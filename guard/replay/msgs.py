"""Message types for replay, without a ROS install: a rosbags typestore.

Proposals are parsed by `guard.wire.proposals`, the adapter every front end shares (its names
are re-exported here for replay's modules).

`guard_interfaces/msg/ActionProposal` is registered from its .msg text (kept here, identical to
`ros2_ws/src/guard_interfaces/msg/ActionProposal.msg` without comments; a test checks that), so
neither a ROS build nor the ros2_ws folder is needed to read bags that carry it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from guard.types import MAX_ARGUMENT_DEPTH
from guard.wire.proposals import (
    LABELS,
    ProposalError,
    printable,
    proposal_from_json,
    proposal_from_msg,
)

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


__all__ = [
    "ACTION_PROPOSAL",
    "ACTION_PROPOSAL_MSG",
    "COMPRESSED_IMAGE",
    "IMAGE",
    "IMAGE_TYPES",
    "LABELS",
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
