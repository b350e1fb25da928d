"""A small robot-like MCP server: the kind of server `guard mcp-proxy` stands in front of.

    python examples/mcp_proxy/robot_server.py                     # MCP on stdio
    python examples/mcp_proxy/robot_server.py --http 127.0.0.1:8000   # streamable HTTP, /mcp
    python examples/mcp_proxy/robot_server.py --calls /tmp/calls.jsonl  # log every call run

It pretends to drive a kitchen robot: `move_base`, `turn_on_stove`, `pick`, `get_status`.
Nothing moves; each call that reaches it appends one JSON line (tool and arguments) to the
`--calls` file, so a test can count what actually ran behind the guard.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("kitchen-robot")
_calls: Path | None = None


def _ran(tool: str, **arguments: object) -> None:
    if _calls is not None:
        with _calls.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool()
def move_base(x: float, y: float) -> str:
    """Drive the robot's base to (x, y) metres on the kitchen map."""
    _ran("move_base", x=x, y=y)
    return f"arrived at ({x:g}, {y:g})"


@server.tool()
def turn_on_stove(burner: int = 1) -> str:
    """Turn on one burner of the stove."""
    _ran("turn_on_stove", burner=burner)
    return f"burner {burner} is on"


@server.tool()
def pick(object: str) -> str:
    """Pick up an object with the gripper."""
    _ran("pick", object=object)
    return f"holding the {object}"


@server.tool()
def get_status() -> str:
    """Report the robot's battery and pose."""
    _ran("get_status")
    return "battery 87%, at (0, 0)"


def main() -> None:
    global _calls
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", default=None, metavar="HOST:PORT",
                        help="serve streamable HTTP at http://HOST:PORT/mcp (default: stdio)")
    parser.add_argument("--calls", default=None, metavar="FILE",
                        help="append one JSON line per tool call that ran")
    args = parser.parse_args()
    _calls = Path(args.calls) if args.calls else None
    if args.http is None:
        server.run()
    else:
        host, _, port = args.http.rpartition(":")
        server.run("streamable-http", host=host, port=int(port))


if __name__ == "__main__":
    main()
