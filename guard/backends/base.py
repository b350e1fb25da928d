"""The interface every judge backend implements, and what flows through it."""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from guard.types import VERDICT_WORDS

RationaleMode = Literal["sync", "async", "off"]
"""When the explanation after the verdict is generated: before the call returns (sync), after
it on a background thread (async), or not at all (off)."""


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered prompt: a system message, then one user turn of images followed by text.

    Images come before the text so that several proposals on one frame share the prompt
    prefix through the image.
    """

    system: str
    user: str
    images: tuple[Image.Image, ...] = ()

    def messages(self, image_placeholder: Any = None) -> list[dict[str, Any]]:
        """Chat messages in the transformers / OpenAI content-list form."""
        content: list[dict[str, Any]] = [
            {"type": "image", "image": image_placeholder if image_placeholder is not None else im}
            for im in self.images
        ]
        content.append({"type": "text", "text": self.user})
        msgs: list[dict[str, Any]] = []
        if self.system:
            msgs.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        msgs.append({"role": "user", "content": content})
        return msgs


@dataclass(frozen=True)
class JudgeRequest:
    """One judging call.

    `deadline` is a `time.monotonic()` instant. Backends should stop work when it passes
    (stop generating, cancel the request); the guard enforces it regardless.
    """

    prompt: ChatPrompt
    max_new_tokens: int = 128
    deadline: float | None = None
    # The answer's first word, one per verdict, so a backend can score them from the first
    # decoding step (risk from the verdict tokens' probabilities).
    verdict_words: tuple[str, ...] = VERDICT_WORDS
    # Verdict-first backends may return after the verdict (see RationaleMode); the others
    # always answer in full, as in "sync".
    rationale: RationaleMode = "sync"

    def remaining_s(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


@dataclass
class JudgeOutput:
    """What a backend answered."""

    text: str
    # Probability of each verdict word at the first decoded position, normalised over the
    # verdict words; None when the backend cannot tell (e.g. a server without logprobs).
    verdict_probs: dict[str, float] | None = None
    n_tokens: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    # With rationale="async": resolves to the full answer text (what `text` holds in sync mode)
    # once it is generated; `text` is then the verdict word alone. None otherwise.
    rationale: cf.Future[str] | None = None


@runtime_checkable
class Backend(Protocol):
    """A judge: turns a prompt with images into an answer text."""

    name: str

    @property
    def model_id(self) -> str:
        """Model id or path (+ adapter) as it appears in `Decision.model`."""
        ...

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        """Answer one request. Raise BackendError (or anything) on failure."""
        ...

    def close(self) -> None:
        """Release the model and any connections."""
        ...
