"""The `server` backend: the judge model lives in a `guard serve` process; this guard renders,
decides and audits.

    model:
      backend: server
      server: {url: http://robot-guard:8731, timeout_s: 10}   # token: GUARD_SERVE_TOKEN

Every front end (middleware, node, replay, bench, `guard check`) can then share one loaded
model. The guard here validates the proposal, applies its rules, checks frame freshness,
resizes each frame to the served model's image grid and renders the prompt with the served
model's template, exactly as a local judge would; the server answers the prompt
(`POST /v1/judge`, batched with its other clients) and this guard parses it, applies its
policy and writes its audit log. On creation the backend reads the server's `/healthz`: a
server that is not ready, or that judges with another template or action format than this
guard would render, is a configuration error (the answers would be off-format). A request
that brings no answer back is a `BackendError` or `BackendTimeout`: the core's fail-closed
veto (status error or timeout), never an allow.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from guard.backends.base import JudgeOutput, JudgeRequest
from guard.config import ModelConfig
from guard.errors import BackendError, BackendTimeout, ConfigError
from guard.imaging import ImageGrid

if TYPE_CHECKING:
    from PIL import Image

    from guard.config import GuardConfig

TOKEN_ENV = "GUARD_SERVE_TOKEN"


class ServerOptions(BaseModel):
    """Where the `guard serve` process is and how to reach it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    url: str = "http://127.0.0.1:8731"
    # The bearer token: read from this file when set, else from the environment variable.
    token_file: str | None = None
    token_env: str = TOKEN_ENV
    # Per-request timeout in seconds; the check's deadline cuts it shorter.
    timeout_s: float = Field(default=10.0, gt=0)


class ServerModelConfig(ModelConfig):
    """`model:` for the server backend: the shared fields and `server:`."""

    backend: str = "server"
    server: ServerOptions = Field(default_factory=ServerOptions)


class ServerBackend:
    """A judge in another process: `guard serve` at `options.url`.

    Args:
        options: URL, token and timeout.
        expect: How this guard renders and sizes (template, action_format, min_pixels,
            max_pixels); the server must judge the same way (None: not checked).
    """

    name = "server"

    def __init__(self, options: ServerOptions,
                 expect: dict[str, Any] | None = None) -> None:
        import httpx

        url = options.url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"model.server.url = {options.url!r}: not an http(s) URL")
        self.url, self.options = url, options
        token = _token(options)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=options.timeout_s)
        try:
            info = self._info()
            differ = {k: (info.get(k), v) for k, v in (expect or {}).items()
                      if info.get(k) != v}
            if differ:
                said = ", ".join(f"{k} {s!r} (here {h!r})" for k, (s, h) in differ.items())
                raise ConfigError(
                    f"the server at {url} judges with {said}: set prompt.template, "
                    "prompt.action_format and image.min_pixels/max_pixels to match (or "
                    "model.id to the served model's folder), so both render one judgement")
        except BaseException:
            self._http.close()
            raise
        self._model_id = str(info.get("model") or url)
        grid = info.get("image_grid")
        #: The served model's grid: this guard resizes each frame to it (`guard.imaging`).
        self.image_grid = ImageGrid(**grid) if isinstance(grid, dict) else None

    @classmethod
    def from_config(cls, config: GuardConfig) -> ServerBackend:
        from guard.backends import model_options
        from guard.prompting import resolve_action_format, resolve_template

        m = model_options(config, ServerModelConfig)
        expect = {"template": resolve_template(config.prompt.template, m.id),
                  "action_format": resolve_action_format(config.prompt.action_format, m.id),
                  "min_pixels": config.image.min_pixels, "max_pixels": config.image.max_pixels}
        return cls(m.server, expect)

    def _info(self) -> dict[str, Any]:
        import httpx

        try:
            r = self._http.get("/healthz")
        except httpx.HTTPError as exc:
            raise BackendError(f"guard serve at {self.url} unreachable: {exc}") from None
        try:
            info: dict[str, Any] = r.json()
        except ValueError:
            info = {}
        if r.status_code != 200 or info.get("status") != "ready":
            why = info.get("error") or info.get("status") or f"HTTP {r.status_code}"
            raise BackendError(f"guard serve at {self.url} is not ready: {why}")
        return info

    @property
    def model_id(self) -> str:
        return self._model_id

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        """The served model's answer to `request`.

        Raises:
            BackendTimeout: No answer within the request's deadline or `timeout_s`.
            BackendError: The server could not be reached, refused, or failed.
        """
        import httpx

        remaining = request.remaining_s()
        if remaining is not None and remaining <= 0:
            raise BackendTimeout("deadline passed before the request was sent")
        body: dict[str, Any] = {
            "system": request.prompt.system, "user": request.prompt.user,
            "images": [_png(im) for im in request.prompt.images],
            "max_new_tokens": request.max_new_tokens, "rationale": request.rationale,
        }
        timeout = self.options.timeout_s
        if remaining is not None:
            body["deadline_ms"] = remaining * 1000.0
            timeout = min(timeout, remaining)
        t0 = time.perf_counter()
        try:
            r = self._http.post("/v1/judge", json=body, timeout=timeout)
        except httpx.TimeoutException:
            raise BackendTimeout(f"no answer from {self.url} within {timeout:.3g} s") from None
        except httpx.HTTPError as exc:
            raise BackendError(f"guard serve at {self.url} unreachable: {exc}") from None
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code == 504:
            raise BackendTimeout(str(data.get("error", "the server's deadline passed")))
        if r.status_code != 200 or not isinstance(data.get("text"), str):
            error = data.get("error") if isinstance(data, dict) else None
            raise BackendError(f"guard serve answered HTTP {r.status_code}"
                               + (f": {error}" if error else " without an answer"))
        timings = data.get("timings_ms") if isinstance(data.get("timings_ms"), dict) else {}
        timings = {**timings, "server_round_trip": (time.perf_counter() - t0) * 1000.0}
        n_tokens = data.get("n_tokens")
        return JudgeOutput(text=data["text"], verdict_probs=data.get("verdict_probs"),
                           n_tokens=n_tokens if isinstance(n_tokens, int) else 0,
                           timings_ms=timings)

    def close(self) -> None:
        self._http.close()


def _token(options: ServerOptions) -> str | None:
    if options.token_file is not None:
        try:
            token = Path(options.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"model.server.token_file = {options.token_file!r}: {exc}"
                              ) from None
        if not token:
            raise ConfigError(f"model.server.token_file = {options.token_file!r}: empty")
        return token
    return os.environ.get(options.token_env, "").strip() or None


def _png(image: Image.Image) -> str:
    """A frame as base64 PNG: lossless, so the server judges the pixels resized here."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
