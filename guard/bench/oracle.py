"""The oracle: a scripted backend that answers every item with its reference answer.

It checks that the harness reads right: with `--backend oracle` a suite whose reference
answers are correct must score R0 = 0 and a false-veto rate of 0, whatever the suite.

The backend only sees the rendered prompt, so it finds the item by what the guard sends: the
frame's pixels after the guard's own resize (`fit_max_pixels`, the same function on the same
pixels, so the same bytes) and the action text inside the prompt. This keeps it correct with any
number of requests in flight and across resumed runs, unlike a list of answers in item order.

A reference answer outside the guard's answer grammar (SIUO's are free text) is replaced by one
built from the label: VETO with the item's hazard for unsafe items, ALLOW for safe ones.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from guard.backends.base import JudgeOutput, JudgeRequest
from guard.backends.scripted import ScriptedBackend
from guard.bench.items import BenchItem
from guard.config import ScriptedStep
from guard.errors import BackendError
from guard.imaging import fit_max_pixels
from guard.prompting import ParseError, parse_answer
from guard.types import ActionProposal, Frame

_UNSAFE_FIELD = re.compile(r"[|\n\r]+")


def proposal_for(item: BenchItem) -> ActionProposal:
    """The proposal the runner sends the guard for `item` (one place, so the oracle agrees)."""
    return ActionProposal(
        id=item.id, name="plan" if item.arguments.get("steps") else "action",
        description=item.query, arguments=dict(item.arguments),
    )


def oracle_answer(item: BenchItem) -> str:
    """The item's reference answer when the guard's parser accepts it, else one built from
    the label and hazard."""
    if item.reference_answer:
        try:
            parse_answer(item.reference_answer)
            return item.reference_answer
        except ParseError:
            pass
    if not item.unsafe:
        return "ALLOW\nrisk: 0.0"
    category = re.sub(r"[^A-Za-z0-9_\- ]+", "_", item.category)[:64] or "unknown"
    if not category[0].isalpha():
        category = "h_" + category
    description = _UNSAFE_FIELD.sub(" ", item.hazard or item.query).strip()[:400]
    consequence = _UNSAFE_FIELD.sub(" ", item.consequence).strip()[:400]
    return f"VETO\nrisk: 1.0\nhazard: {category} | {description} | {consequence} | 1.0"


def _image_key(image: object) -> str:
    arr = np.asarray(image)
    h = hashlib.sha1(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


class OracleBackend(ScriptedBackend):
    """Answers each request with the reference answer of the item it shows.

    Args:
        items: The items to answer for.
        max_pixels: The guard's `image.max_pixels` (to reproduce its resize).
        max_input_pixels: The guard's `image.max_input_pixels`, for decoding.
        max_file_bytes: The guard's `image.max_file_bytes`, for decoding.
    """

    name = "oracle"

    def __init__(
        self,
        items: Iterable[BenchItem],
        *,
        max_pixels: int,
        max_input_pixels: int = 50_000_000,
        max_file_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        super().__init__(model_id="oracle")
        # image key -> [(action text, answer)]; "" for text-only items
        self._table: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for item in items:
            key = ""
            if item.image is not None:
                try:
                    frame = Frame.from_path(
                        item.image, max_input_pixels=max_input_pixels,
                        max_file_bytes=max_file_bytes,
                    )
                except Exception:  # an undecodable image is a bad item; nothing to answer
                    continue
                key = _image_key(fit_max_pixels(frame.image, max_pixels))
            self._table[key].append((proposal_for(item).as_text(), oracle_answer(item)))

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        with self._lock:
            self.requests.append(request)
        images = request.prompt.images
        key = _image_key(images[-1]) if images else ""
        text = request.prompt.user
        # The longest action text contained in the prompt: "turn on the stove top" must not
        # be answered as "turn on the stove".
        matches = [(len(a), ans) for a, ans in self._table.get(key, []) if a in text]
        if not matches:
            raise BackendError("oracle: no item matches this frame and action")
        answer = max(matches, key=lambda m: m[0])[1]
        return JudgeOutput(text=answer, n_tokens=len(answer.split()))

    def _step_for(self, request: JudgeRequest) -> ScriptedStep:  # pragma: no cover - unused
        raise NotImplementedError
