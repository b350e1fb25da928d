"""The oracle: a scripted backend that answers every item with its reference answer.

It checks that the harness reads right: with `--backend oracle` a suite whose reference
answers are correct must score R0 = 0 and a false-veto rate of 0, whatever the suite.

Answers are keyed on item ids. The runner tells the oracle which item each check is for
(`checking(item)`, held around `Guard.check`); the backend itself only sees the rendered
prompt, so among the items in flight it takes the one whose action text the prompt holds and
whose frame it shows (the frame's pixels after the guard's own resize, `fit_max_pixels`, the
same function on the same pixels, so the same bytes). Two items with the same frame and action
(SafeAgentBench repeats instructions across files, with different categories) are never in
flight at once, so each gets its own answer, with any number of requests in flight and across
resumed runs. Called without `checking` (a plain `Guard.check`), it looks the prompt up among
all items and refuses (a failed check) when items that differ share it.

A reference answer outside the guard's answer grammar (SIUO's are free text) is replaced by one
built from the label: VETO with the item's hazard for unsafe items, ALLOW for safe ones.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from guard.backends.base import JudgeOutput, JudgeRequest
from guard.backends.scripted import ScriptedBackend
from guard.bench.items import BenchItem
from guard.config import ScriptedStep
from guard.errors import BackendError
from guard.imaging import fit_max_pixels
from guard.prompting import ParseError, parse_answer
from guard.prompting.action import UNNAMED_TOOL
from guard.types import ActionProposal, Frame, Verdict

_UNSAFE_FIELD = re.compile(r"[|\n\r]+")


def proposal_for(item: BenchItem) -> ActionProposal:
    """The proposal the runner sends the guard for `item` (one place, so the oracle agrees).

    The tool name and arguments are the item's own when its record names them (``tool``,
    ``arguments``: the world's items do), so the judge reads the text training rendered for
    the same item (`training.data.folder_items`); else ``plan`` for a step plan, ``action``.
    """
    tool, arguments = item.meta.get("tool"), item.arguments or item.meta.get("arguments")
    if not (isinstance(tool, str) and tool.strip()):
        tool = "plan" if item.arguments.get("steps") else UNNAMED_TOOL
    return ActionProposal(
        id=item.id, name=tool, description=item.query,
        arguments=dict(arguments) if isinstance(arguments, dict) else {},
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
        return f"{Verdict.ALLOW.word}\nrisk: 0.0"
    category = re.sub(r"[^A-Za-z0-9_\- ]+", "_", item.category)[:64] or "unknown"
    if not category[0].isalpha():
        category = "h_" + category
    description = _UNSAFE_FIELD.sub(" ", item.hazard or item.query).strip()[:400]
    consequence = _UNSAFE_FIELD.sub(" ", item.consequence).strip()[:400]
    return (f"{Verdict.VETO.word}\nrisk: 1.0\n"
            f"hazard: {category} | {description} | {consequence} | 1.0")


def _image_key(image: object) -> str:
    arr = np.asarray(image)
    h = hashlib.sha1(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Entry:
    """What the oracle knows of one item: how its check looks to the backend, and the answer."""

    item_id: str
    frame_key: str  # "" for an item without an image
    action: str
    answer: str


class OracleBackend(ScriptedBackend):
    """Answers each request with the reference answer of the item it is for.

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
        self._entries: dict[str, _Entry] = {}
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
            self._entries[item.id] = _Entry(item.id, key, proposal_for(item).as_text(),
                                            oracle_answer(item))
        self._bound: dict[str, _Entry] = {}  # items whose check is in flight, by id
        self._prompt_locks: dict[tuple[str, str], threading.Lock] = {}
        # item id of each answer, in call order (None when no item matched)
        self.answered: list[str | None] = []

    @contextmanager
    def checking(self, item: BenchItem) -> Iterator[None]:
        """Mark `item` as the one being checked until the block ends.

        Items whose frame and action look the same to the backend wait for each other, so the
        one in flight is the one a matching request is for.
        """
        entry = self._entries.get(item.id)
        if entry is None:  # not known (an undecodable image): the request finds nothing
            yield
            return
        with self._lock:
            lock = self._prompt_locks.setdefault((entry.frame_key, entry.action),
                                                 threading.Lock())
        with lock:
            with self._lock:
                self._bound[item.id] = entry
            try:
                yield
            finally:
                with self._lock:
                    self._bound.pop(item.id, None)

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        images = request.prompt.images
        key = _image_key(images[-1]) if images else ""
        with self._lock:
            self.requests.append(request)
            candidates = list(self._bound.values()) if self._bound else list(
                self._entries.values())
        entry = _match(candidates, key, request.prompt.user)
        with self._lock:
            self.answered.append(entry.item_id if entry else None)
        if entry is None:
            raise BackendError("oracle: no item matches this frame and action")
        return JudgeOutput(text=entry.answer, n_tokens=len(entry.answer.split()))

    def _step_for(self, request: JudgeRequest) -> ScriptedStep:  # pragma: no cover - unused
        raise NotImplementedError


def _match(entries: list[_Entry], frame_key: str, text: str) -> _Entry | None:
    """The entry a prompt is for: its action text is in the prompt, on the same frame when one
    does; the longest such action ("turn on the stove top" is not "turn on the stove").

    Raises:
        BackendError: entries that would answer differently match equally well.
    """
    hits = [e for e in entries if e.action in text]
    hits = [e for e in hits if e.frame_key == frame_key] or hits
    if not hits:
        return None
    longest = max(len(e.action) for e in hits)
    hits = [e for e in hits if len(e.action) == longest]
    if len({e.answer for e in hits}) > 1:
        ids = ", ".join(sorted(e.item_id for e in hits)[:4])
        raise BackendError(f"oracle: items {ids} share this frame and action; judge them "
                           "through the bench runner, which says which item each check is for")
    return hits[0]
