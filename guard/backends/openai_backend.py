"""A judge behind any OpenAI-compatible chat server (vLLM, SGLang, TGI, ...).

This is how the guard model runs on a separate GPU server or a fleet behind one endpoint:

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000
    guard check --image f.jpg --action "turn on the stove" \
        --backend openai --model Qwen/Qwen2.5-VL-7B-Instruct

Images go inline as base64 data URLs (PNG by default, lossless, so the server judges the pixels a
local backend would; ``model.openai.image_format: jpeg`` trades that for ~5-10x fewer bytes), at
the size a local backend would show the same
model (`guard.imaging`): the guard resizes each frame to the served model's patch grid under the
pixel budget, so the server's processor keeps it. The grid is read from the model folder when
``model.id`` is one (as `transformers serve DIR` serves it), else it is ``image.grid_factor``
(28 for Qwen2.5-VL, 32 for Qwen3-VL) under ``image.min_pixels``/``image.max_pixels``; set
those to the server's processor bounds or tighter. Every request has an explicit timeout: the
smaller of `model.openai.timeout_s` and what is left of the check's deadline.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from guard._deps import require
from guard.backends.base import JudgeOutput, JudgeRequest
from guard.config import ModelConfig
from guard.errors import BackendError, BackendTimeout, ConfigError
from guard.imaging import ImageGrid, folder_grid
from guard.prompting.untrusted import break_markers

if TYPE_CHECKING:
    from PIL import Image

    from guard.config import GuardConfig


class OpenAIOptions(BaseModel):
    """An OpenAI-compatible server (vLLM, SGLang, ...)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=10.0, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    logprobs: bool = True
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # How frames travel: png is lossless (the server judges the pixels a local judge would);
    # jpeg (quality 90) is ~5-10x smaller, for thin links.
    image_format: Literal["png", "jpeg"] = "png"


class OpenAIModelConfig(ModelConfig):
    """`model:` for the openai backend: the shared fields (``id`` is the served model's
    name) and `openai:`."""

    backend: str = "openai"
    openai: OpenAIOptions = Field(default_factory=OpenAIOptions)

    foreign_hints: ClassVar[dict[str, str]] = {
        "adapter": "the server loads the model (and its adapter: vLLM --lora-modules)",
        "quantization": "the server quantizes (e.g. vLLM --quantization)",
        "base_url": "it goes under model.openai",
    }


def image_data_url(image: Image.Image, image_format: str = "png", quality: int = 90) -> str:
    """`image` as a data URL: PNG (lossless) or JPEG at `quality`."""
    buf = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.convert("RGB").save(buf, format="PNG")
    mime = "image/jpeg" if image_format == "jpeg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, options: OpenAIOptions | None = None,
                 image_grid: ImageGrid | None = None) -> None:
        """Args:
            model: The served model's name (``model`` in each request).
            options: Server address, timeout, sampling.
            image_grid: The served model's image grid, which the guard resizes frames to
                (`guard.imaging`); None: frames are only downscaled to ``image.max_pixels``.
        """
        httpx = require("httpx", "the openai backend")
        self.options = options or OpenAIOptions()
        self._model = model
        self.image_grid = image_grid
        headers = {}
        key = os.environ.get(self.options.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.options.base_url.rstrip("/"),
            headers=headers,
            timeout=self.options.timeout_s,
        )

    @classmethod
    def from_config(cls, config: GuardConfig) -> OpenAIBackend:
        from guard.backends import model_options

        m = model_options(config, OpenAIModelConfig)
        if not m.id:
            raise ConfigError("model.id: the openai backend needs the served model's name")
        # The grid of the served model: its folder's processor config when model.id names a
        # folder here (the server loads the same file), else the configured family's factor.
        grid = folder_grid(m.id) or ImageGrid(config.image.grid_factor)
        return cls(m.id, m.openai, grid)

    @property
    def model_id(self) -> str:
        return f"{self._model}@{self.options.base_url}"

    def _payload(self, request: JudgeRequest) -> dict[str, Any]:
        prompt = request.prompt
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {
                "url": image_data_url(im, self.options.image_format)}}
            for im in prompt.images
        ]
        # The server renders its chat template and tokenizes with special tokens parsed, and
        # its ids cannot be checked from here: markers are broken once more (a no-op on a
        # prompt from PromptTemplate.render, which already broke those of the action).
        content.append({"type": "text", "text": break_markers(prompt.user)})
        messages: list[dict[str, Any]] = []
        if prompt.system:
            messages.append({"role": "system", "content": break_markers(prompt.system)})
        messages.append({"role": "user", "content": content})
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": self.options.temperature,
        }
        if self.options.logprobs:
            payload.update(logprobs=True, top_logprobs=20)
        payload.update(self.options.extra_body)
        return payload

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        t0 = time.perf_counter()
        payload = self._payload(request)
        t1 = time.perf_counter()
        timeout = self.options.timeout_s
        remaining = request.remaining_s()
        if remaining is not None:
            if remaining <= 0:
                raise BackendTimeout("deadline passed before the request was sent")
            timeout = min(timeout, remaining)
        try:
            resp = self._client.post("/chat/completions", json=payload, timeout=timeout)
        except self._httpx.TimeoutException:
            raise BackendTimeout(
                f"{self.options.base_url}: no answer within {timeout:.3f} s"
            ) from None
        except self._httpx.HTTPError as exc:
            raise BackendError(f"{self.options.base_url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise BackendError(
                f"{self.options.base_url}: HTTP {resp.status_code}: {resp.text[:200]!r}"
            )
        try:
            body = resp.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.options.base_url}: malformed response {resp.text[:200]!r}"
            ) from None
        usage = body.get("usage") or {}
        return JudgeOutput(
            text=text,
            verdict_probs=_verdict_probs(choice.get("logprobs"), request.verdict_words),
            n_tokens=int(usage.get("completion_tokens") or 0),
            timings_ms={
                "preprocess": (t1 - t0) * 1000.0,
                "request": (time.perf_counter() - t1) * 1000.0,
            },
        )

    def close(self) -> None:
        self._client.close()


def _verdict_probs(logprobs: Any, words: tuple[str, ...]) -> dict[str, float] | None:
    """Probabilities of the verdict words at the first generated token, from top_logprobs.

    A verdict word's first token is matched by prefix (servers tokenise "VETO" as "VET"+"O"),
    so a candidate token counts for the one word it begins; ambiguous tokens are skipped.
    """
    try:
        first = logprobs["content"][0]["top_logprobs"]
    except (TypeError, KeyError, IndexError):
        return None
    probs = dict.fromkeys(words, 0.0)
    for cand in first or []:
        tok = str(cand.get("token", "")).strip().upper()
        if not tok:
            continue
        owners = [w for w in words if w.startswith(tok)]
        if len(owners) == 1:
            probs[owners[0]] += math.exp(float(cand.get("logprob", -math.inf)))
    total = sum(probs.values())
    if total <= 0:
        return None
    return {w.lower(): p / total for w, p in probs.items()}
