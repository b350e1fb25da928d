"""`guard mcp-proxy`: an MCP server in front of a robot's MCP server; every tool call is
judged before it is forwarded.

    guard mcp-proxy --upstream "python examples/mcp_proxy/robot_server.py" \
        --frames /tmp/camera --config guard.yaml                      # MCP on stdio
    guard mcp-proxy --upstream http://robot:8000/mcp --frames frame.jpg --http 127.0.0.1:8765

Frame sources (one): `--frames PATH` (an image file, or a folder whose newest image is the
latest frame), `--camera SOURCE` (OpenCV), `--ros-topic TOPIC`, or `--image-argument NAME`
(the tool call's own image argument). Without one, every call is a no_frame veto unless the
policy sets `require_frame: false`.

Exit codes: 0 when the client disconnected (stdio) or the server was stopped, 2 for a usage
error, 1 when the judge or the upstream server could not be started.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guard.cli.check import add_judge_arguments

if TYPE_CHECKING:
    from guard.mcp.proxy import FrameSource


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upstream", required=True, metavar="CMD_OR_URL",
                   help="the MCP server to guard: a command that serves MCP on stdio "
                   "(quoted, split as a shell would) or an http(s) streamable HTTP URL")
    add_judge_arguments(p)
    frames = p.add_argument_group("frame source (at most one)")
    frames.add_argument("--frames", default=None, metavar="PATH",
                        help="an image file (its current contents) or a folder (its newest "
                        "image file), stamped with the file's modification time")
    frames.add_argument("--camera", default=None, metavar="SOURCE",
                        help="an OpenCV video source: device index, stream URL or video file")
    frames.add_argument("--ros-topic", default=None, metavar="TOPIC",
                        help="a ROS 2 image topic (sensor_msgs/Image, or CompressedImage "
                        "for a name ending in /compressed)")
    frames.add_argument("--image-argument", default=None, metavar="NAME",
                        help="the tool argument that carries the frame (MCP image content, "
                        "a data URL or base64)")
    p.add_argument("--annotate", choices=("forward", "ask"), default="forward",
                   help="an annotate verdict: forward the call with the warning attached "
                   "(default), or ask a human through MCP elicitation first (a decline, no "
                   "answer or a client without elicitation refuses the call)")
    p.add_argument("--ask-timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for the human's answer with --annotate ask "
                   "(default 120)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio")


def parse_http(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) for `--http`.

    Raises:
        UsageError: not HOST:PORT with a port in 1..65535.
    """
    from guard.errors import UsageError

    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--http {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port_text)


def frame_source(args: argparse.Namespace) -> FrameSource | None:
    """The frame source the flags name (None for none or --image-argument).

    Raises:
        UsageError: more than one source, or a path that does not exist.
    """
    from guard.errors import UsageError

    given = [flag for flag, value in (
        ("--frames", args.frames), ("--camera", args.camera),
        ("--ros-topic", args.ros_topic), ("--image-argument", args.image_argument),
    ) if value is not None]
    if len(given) > 1:
        raise UsageError(f"give one frame source, got {' and '.join(given)}")
    if args.frames is not None:
        from guard.frames import frame_source_from_path

        if not Path(args.frames).exists():
            raise UsageError(f"--frames {args.frames}: no such image file or folder")
        return frame_source_from_path(args.frames)
    if args.camera is not None:
        from guard.frames import OpenCVCapture

        source: int | str = int(args.camera) if args.camera.isdigit() else args.camera
        return OpenCVCapture(source)
    if args.ros_topic is not None:
        from guard.frames import RosImageTopic

        return RosImageTopic(args.ros_topic)
    return None


def run(args: argparse.Namespace) -> int:
    import anyio

    from guard._deps import require
    from guard.cli.check import load_judge_config, open_guard
    from guard.errors import UsageError

    if args.http is not None:
        http = parse_http(args.http)
    if not args.ask_timeout > 0:
        raise UsageError(f"--ask-timeout {args.ask_timeout}: must be > 0 seconds")
    require("mcp", "guard mcp-proxy")
    from guard.mcp import GuardProxy, ProxyOptions, upstream_target

    upstream_target(args.upstream)  # a bad command is a usage error before anything loads
    frames = frame_source(args)
    guard = None
    try:
        guard = open_guard(load_judge_config(args))
        proxy = GuardProxy(guard, ProxyOptions(
            upstream=args.upstream, frames=frames, image_argument=args.image_argument,
            annotate=args.annotate, ask_timeout_s=args.ask_timeout,
        ))
        if args.http is None:
            anyio.run(proxy.serve_stdio)
        else:
            anyio.run(proxy.serve_http, *http)
    finally:
        close: Any = getattr(frames, "close", None)
        if close is not None:
            close()
        if guard is not None:
            guard.close()
    return 0
