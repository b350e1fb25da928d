"""The MCP proxy: the guard in front of a robot's MCP server (`guard mcp-proxy`).

    from guard.mcp import GuardProxy, ProxyOptions

- `GuardProxy`: an MCP server (stdio or streamable HTTP) that re-exposes the upstream
  server's tools, judges every `tools/call` with `Guard.check` before forwarding it, and adds
  a `guard_check` tool.
- `ProxyOptions`: the upstream (command or URL), the frame source, annotate handling.
- `guard.mcp.messages`: what the model reads for a veto or a warning (no MCP SDK needed).

Needs the `mcp` extra (`pip install 'embodied-guard[mcp]'`); importing this package without
it raises an error naming the extra.
"""

from __future__ import annotations

from guard._deps import require

require("mcp", "guard mcp-proxy")

from guard.mcp.proxy import (  # noqa: E402  (after the check that names the extra)
    APPROVAL_KEY,
    GUARD_CHECK,
    GuardProxy,
    ProxyOptions,
    upstream_target,
)

__all__ = ["APPROVAL_KEY", "GUARD_CHECK", "GuardProxy", "ProxyOptions", "upstream_target"]
