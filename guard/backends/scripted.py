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

from guard.backends.base import JudgeOutput, JudgeRequest
from guard.config import ScriptedOptions, ScriptedStep
from guard.errors import BackendError

if TYPE_CHECKING:
    from guard.config import GuardConfig


_KEEP_IMAGES = 16


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
        return cls(config.model.scripted, model_id=config.model.id or "scripted")

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
