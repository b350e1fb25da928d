"""An agent's side of `guard mcp-proxy`, offline: the MCP SDK's client starts the proxy in front
of the small robot server and calls its tools, as an LLM agent would.

    python examples/mcp_proxy/client.py             # from the repository root

The proxy judges every call with the scripted judge of `guard.yaml` against
`examples/kitchen_towel_on_stove.jpg`: `move_base` runs, `turn_on_stove` is vetoed (a tool
error stating the projected consequence; the robot never gets the call), `pick` of a knife is
vetoed by a rule, `pick` of a cup runs with a warning, and `guard_check` asks without running
anything. Decisions go to `guard-mcp-audit.jsonl` in a temporary folder; the script verifies it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


async def main(audit: Path) -> None:
    proxy = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guard.cli.main", "mcp-proxy",
              "--upstream", f"{sys.executable} {HERE / 'robot_server.py'}",
              "--config", str(HERE / "guard.yaml"), "--audit", str(audit),
              "--frames", str(ROOT / "examples" / "kitchen_towel_on_stove.jpg")],
        env=dict(os.environ),
    )
    async with Client(proxy) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(t.name for t in tools.tools))
        calls: list[tuple[str, dict[str, Any]]] = [
            ("move_base", {"x": 1.0, "y": 2.0}),
            ("turn_on_stove", {"burner": 2}),
            ("pick", {"object": "knife"}),
            ("pick", {"object": "cup"}),
            ("guard_check", {"tool": "turn_on_stove", "arguments": {"burner": 1}}),
        ]
        for name, arguments in calls:
            result = await client.call_tool(name, arguments)
            text = "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))
            print(f"\n{name}({arguments}) -> {'ERROR' if result.is_error else 'ok'}")
            print(textwrap.indent(text, "    "))


if __name__ == "__main__":
    from guard.audit import verify

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "guard-mcp-audit.jsonl"
        anyio.run(main, log)
        print("\n" + verify(log).describe(log.name))
