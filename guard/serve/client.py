"""The client side of `guard serve`: send a check, get the server's decision back.

    decision = post_check("http://robot-guard:8731", {"action": "turn on the stove",
                          "images": [b64_png]}, token=os.environ.get("GUARD_SERVE_TOKEN"))

Only httpx (a core dependency). A server that cannot be reached, does not answer within
`timeout_s`, or answers with something that is not a decision raises `RemoteFailure`, which
carries the status the caller's own fail-closed veto should have (timeout or error): a
caller never turns a failed request into an allow.
"""

from __future__ import annotations

from typing import Any

from guard.types import Decision, Status

#: HTTP statuses whose body is a decision (200: judged; 500 and 503: the server's own veto).
DECISION_CODES = (200, 500, 503)


class RemoteFailure(Exception):
    """No decision came back: `status` (timeout or error) and one line saying why."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def check_url(url: str) -> str:
    """`url` (a server's base URL) with the check path, or ValueError when it is not http(s)."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return base if base.endswith("/v1/check") else f"{base}/v1/check"


def post_check(url: str, body: dict[str, Any], *, token: str | None = None,
               timeout_s: float = 30.0) -> Decision:
    """The server's decision for one check (`body` as `POST /v1/check` takes it).

    Raises:
        ValueError: `url` is not an http(s) URL.
        RemoteFailure: No decision came back (unreachable, timed out, refused, garbled).
    """
    import httpx

    target = check_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(target, json=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        raise RemoteFailure(Status.TIMEOUT,
                            f"no answer from {target} within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise RemoteFailure(Status.ERROR, f"server {target} unreachable: {exc}") from None
    if response.status_code in DECISION_CODES:
        try:
            return Decision.model_validate_json(response.content)
        except ValueError:
            pass
    try:
        error = str(response.json().get("error", ""))
    except ValueError:
        error = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    raise RemoteFailure(Status.ERROR, f"server answered HTTP {response.status_code}"
                        + (f": {error}" if error else " without a decision"))
