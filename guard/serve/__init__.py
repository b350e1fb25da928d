"""`guard serve`: one process holds the judge model and answers many clients over HTTP.

    guard serve --model guard/models/hazardworld-small --port 8731
    curl -s localhost:8731/healthz
    curl -s localhost:8731/v1/check -d '{"action": "turn on the stove", "images": ["<base64>"]}'

Requests that wait together are judged in one batch (`Guard.judge_batch`: each gets exactly
the decision `guard check` would print for it); a full queue is answered at once with an
audited veto. The API and its status codes: `guard.serve.app`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeOptions", "create_app"]


def __getattr__(name: str) -> Any:
    # The server needs the `serve` extra; its client (guard.serve.client) only the core.
    if name in __all__:
        from guard._deps import require

        require("starlette", "guard serve")
        from guard.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'guard.serve' has no attribute {name!r}")
