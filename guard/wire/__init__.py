"""Wire formats in, the guard's types out: one adapter per format, pure and free of ROS.

The ROS node, `guard replay`, the frame sources and the middleware all read their inputs
through this package, so a frame or a proposal means the same thing at every front end:

- `guard.wire.images`: `sensor_msgs/Image` (every encoding camera drivers publish) and
  `CompressedImage` to RGB uint8;
- `guard.wire.stamps`: `builtin_interfaces/Time` as integer nanoseconds, never through float
  seconds where the original time must come back;
- `guard.wire.proposals`: `guard_interfaces/msg/ActionProposal`, `std_msgs/String` JSON,
  OpenAI tool calls and in-process calls to `ActionProposal`.

Messages are read by field name, so rclpy's classes, rosbags' dataclasses and plain objects
all work, and nothing here imports rclpy.
"""

from guard.wire.images import (
    SUPPORTED_ENCODINGS,
    ros_compressed_to_rgb,
    ros_image_to_rgb,
    ros_message_to_rgb,
)
from guard.wire.proposals import (
    ProposalError,
    ToolCall,
    loads_json,
    parse_arguments,
    parse_tool_call,
    proposal_fields_from_msg,
    proposal_from_call,
    proposal_from_json,
    proposal_from_msg,
    proposal_from_tool_call,
)
from guard.wire.stamps import (
    InvalidStamp,
    header_stamp_ns,
    ns_to_seconds,
    ns_to_time,
    seconds_to_ns,
    time_to_ns,
)

__all__ = [
    "SUPPORTED_ENCODINGS",
    "InvalidStamp",
    "ProposalError",
    "ToolCall",
    "header_stamp_ns",
    "loads_json",
    "ns_to_seconds",
    "ns_to_time",
    "parse_arguments",
    "parse_tool_call",
    "proposal_fields_from_msg",
    "proposal_from_call",
    "proposal_from_json",
    "proposal_from_msg",
    "proposal_from_tool_call",
    "ros_compressed_to_rgb",
    "ros_image_to_rgb",
    "ros_message_to_rgb",
    "seconds_to_ns",
    "time_to_ns",
]
