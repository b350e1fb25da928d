"""A test double with the real backend interface: configured answers, delays and exceptions.

Answers cycle through `model.scripted.responses`, unless the action text contains a key of
`model.scripted.by_action` (first match wins). A step with `delay_ms` sleeps (honouring the
request deadline only as a real backend would: it keeps sleeping); one with `raise_error`
raises BackendError, or hangs forever with the special value "hang".
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import deque
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from guard.backends.base import JudgeOutput, JudgeRequest
from guard.config import ModelConfig
from guard.errors import BackendError
from guard.types import Verdict

if TYPE_CHECKING:
    from guard.config import GuardConfig


_KEEP_IMAGES = 16


class ScriptedStep(BaseModel):
    """One scripted answer: a text, a delay, or an exception to raise."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    text: str = ""
    delay_ms: float = Field(default=0.0, ge=0)
    raise_error: str | None = None
    verdict_probs: dict[str, float] | None = None


class ScriptedOptions(BaseModel):
    """The test double: answers from a list, cycling; or by matching the action text."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    responses: list[ScriptedStep] = Field(
        default_factory=lambda: [ScriptedStep(text=f"{Verdict.ALLOW.word}\nrisk: 0.0")]
    )
    by_action: dict[str, ScriptedStep] = Field(default_factory=dict)


class ScriptedModelConfig(ModelConfig):
    """`model:` for the scripted backend: the shared fields and `scripted:`."""

    backend: str = "scripted"
    scripted: ScriptedOptions = Field(default_factory=ScriptedOptions)


class ScriptedBackend:
    name = "scripted"

    def __init__(self, options: ScriptedOptions | None = None, model_id: str = "scripted") -> None:
        self.options = options or ScriptedOptions()
        self._model_id = model_id
        self._cycle = itertools.cycle(self.options.responses or [ScriptedStep(text="")])
        self._lock = threading.Lock()
        self._release = threading.Event()
        # The latest requests, for tests to inspect; bounded so a long-running node on the
        # scripted judge does not grow without limit. Only the newest keep their images
        # (1024 requests with 640x480 frames held ~1.2 GB).
        self.requests: deque[JudgeRequest] = deque(maxlen=1024)

    @classmethod
    def from_config(cls, config: GuardConfig) -> ScriptedBackend:
        from guard.backends import model_options

        m = model_options(config, ScriptedModelConfig)
        return cls(m.scripted, model_id=m.id or "scripted")

    @classmethod
    def answering(cls, *texts: str, delay_ms: float = 0.0) -> ScriptedBackend:
        """Shorthand: a backend that answers `texts` in turn."""
        steps = [ScriptedStep(text=t, delay_ms=delay_ms) for t in texts]
        return cls(ScriptedOptions(responses=steps))

    @property
    def model_id(self) -> str:
        return self._model_id

    def _step_for(self, request: JudgeRequest) -> ScriptedStep:
        for key, step in self.options.by_action.items():
            if key.lower() in request.prompt.user.lower():
                return step
        with self._lock:
            return next(self._cycle)

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        with self._lock:
            self.requests.append(request)
            if len(self.requests) > _KEEP_IMAGES:
                old = self.requests[-_KEEP_IMAGES - 1]
                if old.prompt.images:
                    self.requests[-_KEEP_IMAGES - 1] = dataclasses.replace(
                        old, prompt=dataclasses.replace(old.prompt, images=())
                    )
        step = self._step_for(request)
        if step.delay_ms:
            self._release.wait(step.delay_ms / 1000.0)
        if step.raise_error == "hang":
            self._release.wait()  # until close(): a backend stuck in a driver call
        elif step.raise_error:
            raise BackendError(step.raise_error)
        return JudgeOutput(
            text=step.text, verdict_probs=step.verdict_probs, n_tokens=len(step.text.split())
        )

    def close(self) -> None:
        self._release.set()
