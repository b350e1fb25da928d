"""Verdict-first greedy decoding with prompt-prefix and frame caches, shared by the in-process
backends (transformers, ONNX Runtime).

On a robot the time to a verdict is the time to read the image and the prompt, not to write the
explanation, so this engine is built around the prefill:

- **Verdict first.** The answer format puts the verdict word first, so the verdict is the
  argmax of the prefill's last logits over the verdict words' first tokens, and the risk comes
  from their probabilities. ``rationale="off"`` stops there; ``"async"`` returns the decision
  and keeps decoding the rest of the answer on a background thread (a `Future`); ``"sync"``
  decodes the whole answer before returning, as a plain ``generate`` would. When the model's own
  greedy first token is not a verdict word (an off-format model), every mode decodes the whole
  answer so the strict parser decides, exactly as in sync mode.
- **Prefix cache.** The keys and values (KV) of the fixed system part of the prompt are
  computed once per model and reused by every check.
- **Frame cache.** Images come before the action text in the prompt, so every proposal judged
  against one frame shares the KV of everything up to the end of the image: the second and later
  proposals only prefill the action text. The image processor's and vision encoder's outputs are
  kept per image too (they serve prompts that share a frame but not the prefix through it, such
  as a sliding window of several frames).
- **Batches.** ``judge_batch`` runs many prompts in one forward: the shared cached prefix is
  expanded over the batch and each row's remaining tokens are left-padded after it (a mask hides
  the padding), so each row computes what it would alone.

Positions are Qwen-VL's 3-D M-RoPE ids, computed in Python over the whole prompt
(`guard.backends.mrope`) and sliced, so a cached prefix never needs the model's own
``get_rope_index`` state.

The engine talks to the model through a `Runner` (forward pass, vision encoder, KV handling), so
the same decoding runs on PyTorch and on ONNX Runtime sessions.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from guard.backends.base import JudgeOutput, JudgeRequest
from guard.backends.mrope import mrope_positions
from guard.errors import BackendError, BackendTimeout

if TYPE_CHECKING:
    from PIL import Image

    from guard.backends.base import ChatPrompt
    from guard.backends.qwen_inputs import QwenInputBuilder

log = logging.getLogger(__name__)

_NEG_INF = np.float32(-np.inf)


class Runner(Protocol):
    """What the engine needs from a model: one forward pass with a KV cache, and the vision
    encoder. KV states are opaque to the engine."""

    def encode_images(
        self, pixels: Sequence[np.ndarray], grids: Sequence[np.ndarray]
    ) -> list[Any]:
        """Vision features of each image (whatever `forward` takes back)."""
        ...

    def forward(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        mask: np.ndarray | None,
        past: Any,
        images: Sequence[Any],
    ) -> tuple[np.ndarray, Any]:
        """Run ``ids`` (B, L) at ``positions`` (3, B, L) after ``past`` (None: empty).

        ``mask`` (B, past + L) is 1 on real tokens, 0 on padding; None means no padding.
        ``images`` are the features of the images whose tokens are in ``ids``, in order.
        Returns the float32 logits of the last position (B, V) and the grown KV state.
        """
        ...

    def snapshot(self, past: Any, length: int) -> Any:
        """The first ``length`` positions of row 0 of ``past``, kept for reuse (never mutated
        by later forwards)."""
        ...

    def restore(self, stored: Any, batch: int) -> Any:
        """A fresh KV state holding ``stored`` for each of ``batch`` rows."""
        ...


# -- caches ------------------------------------------------------------------------------------


def image_key(image: Image.Image) -> str:
    """A content hash of an image: the same frame object or the same pixels give the same key."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class _LRU:
    """A small least-recently-used map."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: str, value: Any) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


@dataclass
class _ImageEntry:
    pixels: np.ndarray
    grid: np.ndarray
    features: Any = None


@dataclass
class ImageSlot:
    """One image of a prepared prompt."""

    key: str
    start: int  # index of its first image token
    grid: np.ndarray
    entry: _ImageEntry


@dataclass
class Prepared:
    """A prompt as token ids, positions and the prefixes whose KV can be reused.

    Attributes:
        ids: Token ids, shape (L,).
        positions: M-RoPE position ids, shape (3, L).
        next_position: The position of the first generated token.
        images: The images, in order.
        prefixes: ``(key, length)`` of each reusable prefix, shortest first: the fixed system
            part, then everything through the last image.
    """

    ids: np.ndarray
    positions: np.ndarray
    next_position: int
    images: list[ImageSlot]
    prefixes: list[tuple[str, int]]


@dataclass
class _Hit:
    key: str
    length: int
    stored: Any


class PriorityLock:
    """The backend's one lock, where a check waiting for a verdict goes before background
    rationale decoding (which gives the lock up between tokens while a check waits)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._critical_waiting = 0

    @contextmanager
    def critical(self) -> Iterator[None]:
        """Hold the lock for a check."""
        with self._cond:
            self._critical_waiting += 1
            try:
                while self._held:
                    self._cond.wait()
            finally:
                self._critical_waiting -= 1
            self._held = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def background(self) -> Iterator[None]:
        """Hold the lock for background work; waits while any check waits."""
        with self._cond:
            while self._held or self._critical_waiting:
                self._cond.wait()
            self._held = True
        try:
            yield
        finally:
            self._release()

    def check_waiting(self) -> bool:
        """True when a check waits for the lock (background work should yield)."""
        return self._critical_waiting > 0

    def _release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


# -- decoding ----------------------------------------------------------------------------------


@dataclass
class DecodeState:
    """Greedy decoding of a batch, one token per `step`, resumable from any thread that holds
    the engine's lock."""

    logits: np.ndarray  # (B, V) logits for the next token of each row
    past: Any
    next_pos: np.ndarray  # (B,) position of the next token
    mask: np.ndarray | None  # (B, K) or None when no row is padded
    max_new: list[int]
    tokens: list[list[int]] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        b = self.logits.shape[0]
        self.tokens = self.tokens or [[] for _ in range(b)]
        self.done = self.done or [False] * b

    @property
    def finished(self) -> bool:
        return all(self.done)


@dataclass
class _Verdict:
    word: str | None  # None: the model's greedy first token is no verdict word
    probs: dict[str, float] | None


class VerdictFirstEngine:
    """Greedy, verdict-first decoding of guard prompts on a `Runner`, with caches.

    Args:
        runner: The model.
        inputs: Builds token ids and pixel values from chat prompts.
        eos_token_ids: Tokens that end an answer.
        pad_token_id: Fills batch padding (masked out).
        spatial_merge_size: The vision config's ``spatial_merge_size``.
        verdict_token_ids: ``words -> {word: first token id}`` or None when the words share a
            first token (then no verdict-first and no probabilities).
        prefix_cache: Keep the KV of the fixed system part of the prompt.
        frame_cache: Frames whose image preprocessing, vision features and KV prefix are kept
            (0 turns the frame cache off).
        clock: Monotonic clock the requests' deadlines are on; called once before the prefill
            and once per generated token.
    """

    def __init__(
        self,
        runner: Runner,
        inputs: QwenInputBuilder,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        spatial_merge_size: int,
        verdict_token_ids: Callable[[tuple[str, ...]], dict[str, int] | None],
        prefix_cache: bool = True,
        frame_cache: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.inputs = inputs
        self.tokenizer = inputs.tokenizer
        self.eos = {int(t) for t in eos_token_ids}
        self.pad_token_id = int(pad_token_id)
        self.merge = int(spatial_merge_size)
        self.image_token_id = int(inputs.image_token_id)
        self.im_start_id = int(self.tokenizer.convert_tokens_to_ids("<|im_start|>"))
        self.vision_end_id = int(self.tokenizer.convert_tokens_to_ids("<|vision_end|>"))
        self.verdict_token_ids = verdict_token_ids
        self.prefix_cache = prefix_cache
        self.frame_cache = frame_cache
        self.clock = clock
        self.lock = PriorityLock()
        self._images = _LRU(max(frame_cache, 0))
        self._frames = _LRU(max(frame_cache, 0))
        # Per frame, the ids and keys/values of the last whole prompt judged on it: the next
        # proposal reuses its longest common prefix (the fixed text after the image too).
        self._prompts = _LRU(max(frame_cache, 0))
        self._systems = _LRU(4 if prefix_cache else 0)
        self._background = cf.ThreadPoolExecutor(1, thread_name_prefix="guard-rationale")
        self._closed = False
        self.stats: dict[str, int] = dict.fromkeys(
            ("checks", "system_hits", "frame_hits", "prompt_hits", "image_hits",
             "vision_encodes", "prefill_tokens", "cached_tokens", "off_format"), 0
        )

    # -- preparing prompts -----------------------------------------------------------------

    def prepare(self, prompt: ChatPrompt) -> Prepared:
        """Token ids, positions, images and reusable prefixes of a prompt."""
        slots_entries: list[tuple[str, _ImageEntry]] = []
        for im in prompt.images:
            key = image_key(im)
            entry = self._images.get(key)
            if entry is None:
                enc = self.inputs.encode_images([im])
                entry = _ImageEntry(
                    pixels=enc["pixel_values"].numpy(), grid=enc["image_grid_thw"][0].numpy()
                )
                self._images.put(key, entry)
            else:
                self.stats["image_hits"] += 1
            slots_entries.append((key, entry))
        pixels = None
        if slots_entries:
            import torch

            pixels = {
                "pixel_values": torch.from_numpy(
                    np.concatenate([e.pixels for _, e in slots_entries])
                ),
                "image_grid_thw": torch.from_numpy(np.stack([e.grid for _, e in slots_entries])),
            }
        enc = self.inputs.from_messages(prompt.messages(), prompt.images, pixels=pixels)
        ids = enc["input_ids"][0].numpy().astype(np.int64)
        types = enc["mm_token_type_ids"][0].numpy()
        grids = np.stack([e.grid for _, e in slots_entries]) if slots_entries else np.zeros((0, 3))
        positions, next_pos = mrope_positions(types, grids, self.merge)

        starts = _run_starts(types)
        slots = [
            ImageSlot(key=k, start=s, grid=e.grid, entry=e)
            for (k, e), s in zip(slots_entries, starts, strict=True)
        ]
        return Prepared(ids, positions, next_pos, slots, self._prefixes(ids, slots))

    def _prefixes(self, ids: np.ndarray, slots: list[ImageSlot]) -> list[tuple[str, int]]:
        """The reusable prefixes: the system turn (through the user turn's ``<|im_start|>``),
        and everything through the last image's ``<|vision_end|>``."""
        out: list[tuple[str, int]] = []
        starts = np.flatnonzero(ids == self.im_start_id)
        # [system turn,] user turn, assistant header: the user turn opens at the last but one.
        if self.prefix_cache and len(starts) >= 2:
            n = int(starts[-2]) + 1
            if slots and n <= slots[0].start:
                # Images come first in the user turn: its header and the first image's
                # <|vision_start|> are fixed text too. (Were the action before the image, the
                # key would differ per action: a miss, never a wrong hit.)
                n = slots[0].start
            if not slots or n <= slots[0].start:
                out.append(("system:" + _digest(ids[:n]), n))
        if self.frame_cache > 0 and slots:
            last = slots[-1]
            n_tokens = int(np.prod(last.grid)) // self.merge**2
            end = last.start + n_tokens
            if end < len(ids) and ids[end] == self.vision_end_id:
                end += 1
            # Leave at least one token to prefill: its logits give the verdict.
            if end < len(ids):
                out.append(("frame:" + _digest(ids[:end], [s.key for s in slots]), end))
        return out

    def _get(self, key: str) -> Any:
        return (self._frames if key.startswith("frame:") else self._systems).get(key)

    def _lookup(self, prep: Prepared) -> _Hit | None:
        last = self._last_prompt(prep)
        if last is not None:
            return last
        for key, n in reversed(prep.prefixes):
            stored = self._get(key)
            if stored is not None:
                self.stats["frame_hits" if key.startswith("frame:") else "system_hits"] += 1
                return _Hit(key, n, stored)
        return None

    def _last_prompt(self, prep: Prepared) -> _Hit | None:
        """The longest prefix shared with the last prompt judged on the same frame, when it
        goes past the frame itself (at least one token is left to prefill)."""
        frame = next(((k, n) for k, n in reversed(prep.prefixes) if k.startswith("frame:")),
                     None)
        stored = self._prompts.get(frame[0]) if frame is not None else None
        if frame is None or stored is None:
            return None
        key, n_frame = frame
        ids, kv = stored
        limit = min(len(ids), len(prep.ids) - 1)
        differ = np.flatnonzero(ids[:limit] != prep.ids[:limit])
        n = int(differ[0]) if len(differ) else limit
        if n <= n_frame:
            return None
        # A frame cache hit that reaches further: counted as both.
        self.stats["frame_hits"] += 1
        self.stats["prompt_hits"] += 1
        return _Hit("prompt:" + key, n, self.runner.snapshot(self.runner.restore(kv, 1), n))

    def _store(self, prep: Prepared, past: Any, start: int) -> None:
        for key, n in prep.prefixes:
            store = self._frames if key.startswith("frame:") else self._systems
            if n > start and key not in store:
                store.put(key, self.runner.snapshot(past, n))
            if key.startswith("frame:"):
                # The whole prompt (its keys/values are all in `past` after the prefill).
                n_all = len(prep.ids)
                self._prompts.put(key, (prep.ids.copy(), self.runner.snapshot(past, n_all)))

    def _features(self, slots: Sequence[ImageSlot]) -> list[Any]:
        todo = [s for s in slots if s.entry.features is None]
        if todo:
            feats = self.runner.encode_images([s.entry.pixels for s in todo],
                                              [s.grid for s in todo])
            self.stats["vision_encodes"] += len(todo)
            for s, f in zip(todo, feats, strict=True):
                s.entry.features = f
        return [s.entry.features for s in slots]

    # -- prefill -----------------------------------------------------------------------------

    def prefill(self, prep: Prepared, timings: dict[str, float]) -> DecodeState:
        """Run one prompt up to the logits of its first answer token, reusing cached prefixes.
        The caller holds the lock."""
        hit = self._lookup(prep)
        start = hit.length if hit else 0
        past = self.runner.restore(hit.stored, 1) if hit else None
        t0 = time.perf_counter()
        feats = self._features([s for s in prep.images if s.start >= start])
        t1 = time.perf_counter()
        logits, past = self.runner.forward(
            prep.ids[None, start:], prep.positions[:, None, start:], None, past, feats
        )
        timings["vision"] = timings.get("vision", 0.0) + (t1 - t0) * 1000.0
        timings["prefill"] = timings.get("prefill", 0.0) + (time.perf_counter() - t1) * 1000.0
        self.stats["prefill_tokens"] += len(prep.ids) - start
        self.stats["cached_tokens"] += start
        self._store(prep, past, start)
        return DecodeState(
            logits=logits,
            past=past,
            next_pos=np.array([prep.next_position], dtype=np.int64),
            mask=None,
            max_new=[0],
        )

    def prefill_batch(self, preps: Sequence[Prepared], timings: dict[str, float]) -> DecodeState:
        """Run several prompts in one forward: their shared prefix (computed and cached once)
        is expanded over the batch, then each row's own tokens follow, left-padded."""
        b = len(preps)
        common: tuple[str, int] | None = None
        for key, n in reversed(preps[0].prefixes):
            if all((key, n) in p.prefixes for p in preps):
                common = (key, n)
                break
        start, past = 0, None
        if common is not None:
            stored = self._get(common[0])
            if stored is None:
                # Compute the shared prefix once (and cache it) before the batched forward.
                self.prefill(_truncate(preps[0], common[1]), timings)
                stored = self._get(common[0])
            else:
                self.stats["frame_hits" if common[0].startswith("frame:") else "system_hits"] += 1
            if stored is not None:
                start, past = common[1], self.runner.restore(stored, b)
        lengths = [len(p.ids) - start for p in preps]
        width = max(lengths)
        ids = np.full((b, width), self.pad_token_id, dtype=np.int64)
        pos = np.zeros((3, b, width), dtype=np.int64)
        mask = np.zeros((b, start + width), dtype=np.int64)
        mask[:, :start] = 1
        slots: list[ImageSlot] = []
        for r, (p, n) in enumerate(zip(preps, lengths, strict=True)):
            ids[r, width - n :] = p.ids[start:]
            pos[:, r, width - n :] = p.positions[:, start:]
            mask[r, start + width - n :] = 1
            slots.extend(s for s in p.images if s.start >= start)
        t0 = time.perf_counter()
        feats = self._features(slots)
        t1 = time.perf_counter()
        logits, past = self.runner.forward(ids, pos, None if mask.all() else mask, past, feats)
        timings["vision"] = timings.get("vision", 0.0) + (t1 - t0) * 1000.0
        timings["prefill"] = timings.get("prefill", 0.0) + (time.perf_counter() - t1) * 1000.0
        self.stats["prefill_tokens"] += sum(lengths)
        self.stats["cached_tokens"] += start * b
        return DecodeState(
            logits=logits,
            past=past,
            next_pos=np.array([p.next_position for p in preps], dtype=np.int64),
            mask=None if mask.all() else mask,
            max_new=[0] * b,
        )

    # -- decoding ----------------------------------------------------------------------------

    def step(self, state: DecodeState, *, min_new_tokens: int = 0) -> None:
        """Append each unfinished row's greedy next token; run the model unless all rows are
        done. The caller holds the lock."""
        logits = state.logits
        if min_new_tokens and self.eos and any(
            len(t) < min_new_tokens for t in state.tokens
        ):
            logits = logits.copy()
            for r, toks in enumerate(state.tokens):
                if len(toks) < min_new_tokens:
                    logits[r, sorted(self.eos)] = _NEG_INF
        if np.isnan(logits).any():
            raise BackendError("NaN logits during generation")
        nxt = logits.argmax(axis=-1)
        for r in range(len(state.done)):
            if state.done[r]:
                continue
            tok = int(nxt[r])
            state.tokens[r].append(tok)
            if tok in self.eos or len(state.tokens[r]) >= state.max_new[r]:
                state.done[r] = True
        if state.finished:
            return
        feed = np.where(state.done, self.pad_token_id, nxt).astype(np.int64)[:, None]
        pos = np.broadcast_to(state.next_pos[None, :, None], (3, len(feed), 1)).copy()
        mask = state.mask
        if mask is not None:
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=mask.dtype)], axis=1)
        state.logits, state.past = self.runner.forward(feed, pos, mask, state.past, [])
        state.mask = mask
        state.next_pos = state.next_pos + 1

    def _verdict(self, logits: np.ndarray, words: tuple[str, ...]) -> _Verdict:
        ids = self.verdict_token_ids(words)
        if not ids:
            return _Verdict(None, None)
        sel = logits[list(ids.values())].astype(np.float64)
        if np.isnan(logits).any() or np.isposinf(sel).any() or np.isneginf(sel).all():
            # argmax picks a NaN, and a softmax over inf is NaN: a broken model (fp16
            # overflow, bad weights) must fail the check, not answer.
            raise BackendError(f"non-finite logits at the verdict position: {sel.tolist()}")
        # A softmax over the verdict tokens' logits equals their vocabulary probabilities
        # renormalised among themselves, without underflow when all are unlikely.
        e = np.exp(sel - sel.max())
        probs = dict(zip(ids, (e / e.sum()).tolist(), strict=True))
        first = int(logits.argmax())
        word = next((w for w, t in ids.items() if t == first), None)
        return _Verdict(word, probs)

    def _check_deadline(self, deadline: float | None, state: DecodeState | None,
                        max_new: int) -> None:
        if deadline is not None and self.clock() >= deadline:
            n = max((len(t) for t in state.tokens), default=0) if state else 0
            raise BackendTimeout(
                f"deadline passed during generation, stopped after {n} of at most "
                f"{max_new} tokens"
            )

    def _decode_all(self, state: DecodeState, deadline: float | None, max_new: int,
                    min_new_tokens: int = 0) -> None:
        while not state.finished:
            self.step(state, min_new_tokens=min_new_tokens)
            self._check_deadline(deadline, state, max_new)

    def _text(self, tokens: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        return text

    # -- judging -----------------------------------------------------------------------------

    def judge(self, request: JudgeRequest, max_new_tokens: int, *,
              min_new_tokens: int = 0) -> JudgeOutput:
        """Answer one request (see the module docstring for the rationale modes).

        Args:
            request: The request; ``request.rationale`` picks sync, async or off.
            max_new_tokens: The backend's cap on generated tokens.
            min_new_tokens: Suppress end-of-answer before this many tokens (benchmarks: a
                fixed-length rationale on random weights).

        Raises:
            BackendTimeout: The deadline passed before the verdict (or, in sync mode, before
                the end of the answer).
            BackendError: The engine is closed or the model failed.
        """
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        max_new = max(1, min(request.max_new_tokens, max_new_tokens))
        with self.lock.critical():
            t_locked = time.perf_counter()
            timings["queue"] = (t_locked - t_start) * 1000.0
            if self._closed:
                raise BackendError("the backend is closed")
            if request.deadline is not None and self.clock() >= request.deadline:
                raise BackendTimeout("deadline passed while queued")
            try:
                prep = self.prepare(request.prompt)
            except Exception as exc:
                raise BackendError(f"preprocessing failed: {_first_line(exc)}") from exc
            timings["preprocess"] = (time.perf_counter() - t_locked) * 1000.0
            self.stats["checks"] += 1
            try:
                state = self.prefill(prep, timings)
            except Exception as exc:
                raise BackendError(f"generation failed: {_first_line(exc)}") from exc
            state.max_new = [max_new]
            verdict = self._verdict(state.logits[0], request.verdict_words)
            timings["verdict"] = (time.perf_counter() - t_start) * 1000.0
            mode = request.rationale
            if verdict.word is None and mode != "sync":
                self.stats["off_format"] += 1
                mode = "sync"  # let the strict parser judge the model's own answer
            if mode == "sync":
                t_dec = time.perf_counter()
                try:
                    # The verdict token is the first step; its deadline check comes after it.
                    self._decode_all(state, request.deadline, max_new, min_new_tokens)
                except BackendTimeout:
                    raise
                except Exception as exc:
                    raise BackendError(f"generation failed: {_first_line(exc)}") from exc
                timings["decode"] = (time.perf_counter() - t_dec) * 1000.0
                text = self._text(state.tokens[0])
                timings["total"] = (time.perf_counter() - t_start) * 1000.0
                return JudgeOutput(text=text, verdict_probs=verdict.probs,
                                   n_tokens=len(state.tokens[0]), timings_ms=timings)
            assert verdict.word is not None
            # The verdict is known: past the deadline it is still too late to act on it.
            self._check_deadline(request.deadline, state, max_new)
        future: cf.Future[str] | None = None
        if mode == "async":
            future = self._background.submit(self._finish_rationale, state, min_new_tokens)
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        return JudgeOutput(text=verdict.word, verdict_probs=verdict.probs, n_tokens=1,
                           timings_ms=timings, rationale=future)

    def _finish_rationale(self, state: DecodeState, min_new_tokens: int) -> str:
        """Decode the rest of an answer off the critical path: a token at a time, yielding the
        lock to any check that waits."""
        while not state.finished:
            with self.lock.background():
                while not state.finished:
                    if self._closed:
                        raise BackendError("the backend closed before the rationale finished")
                    self.step(state, min_new_tokens=min_new_tokens)
                    if self.lock.check_waiting():
                        break
        return self._text(state.tokens[0])

    def judge_batch(self, requests: Sequence[JudgeRequest], max_new_tokens: int, *,
                    min_new_tokens: int = 0) -> list[JudgeOutput]:
        """Answer several requests in one forward per step (replay, benchmarks).

        Rows whose ``rationale`` is "off" stop at their verdict when the model answers in
        format; every other row (async included: a batch has no critical path to leave) is
        decoded to its end. The earliest deadline of the batch applies to all of it.
        """
        if not requests:
            return []
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        caps = [max(1, min(r.max_new_tokens, max_new_tokens)) for r in requests]
        deadlines = [r.deadline for r in requests if r.deadline is not None]
        deadline = min(deadlines) if deadlines else None
        with self.lock.critical():
            if self._closed:
                raise BackendError("the backend is closed")
            if deadline is not None and self.clock() >= deadline:
                raise BackendTimeout("deadline passed while queued")
            try:
                preps = [self.prepare(r.prompt) for r in requests]
            except Exception as exc:
                raise BackendError(f"preprocessing failed: {_first_line(exc)}") from exc
            timings["preprocess"] = (time.perf_counter() - t_start) * 1000.0
            self.stats["checks"] += len(requests)
            try:
                state = self.prefill_batch(preps, timings)
            except Exception as exc:
                raise BackendError(f"generation failed: {_first_line(exc)}") from exc
            verdicts = [
                self._verdict(state.logits[r], req.verdict_words)
                for r, req in enumerate(requests)
            ]
            timings["verdict"] = (time.perf_counter() - t_start) * 1000.0
            verdict_only = [
                req.rationale == "off" and v.word is not None
                for req, v in zip(requests, verdicts, strict=True)
            ]
            # A verdict-only row stops after its first token.
            state.max_new = [1 if vo else cap for vo, cap in zip(verdict_only, caps, strict=True)]
            t_dec = time.perf_counter()
            try:
                self._decode_all(state, deadline, max(caps), min_new_tokens)
            except BackendTimeout:
                raise
            except Exception as exc:
                raise BackendError(f"generation failed: {_first_line(exc)}") from exc
            timings["decode"] = (time.perf_counter() - t_dec) * 1000.0
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        outs = []
        for r, v in enumerate(verdicts):
            text = v.word if verdict_only[r] and v.word else self._text(state.tokens[r])
            outs.append(JudgeOutput(text=text, verdict_probs=v.probs,
                                    n_tokens=len(state.tokens[r]), timings_ms=dict(timings)))
        return outs

    def clear_caches(self) -> None:
        """Forget every cached prefix, image and vision feature."""
        with self.lock.critical():
            self._images.clear()
            self._frames.clear()
            self._systems.clear()

    def close(self) -> None:
        """Stop background decoding (pending rationales fail) and drop the caches."""
        self._closed = True
        self._background.shutdown(wait=True, cancel_futures=True)
        self._images.clear()
        self._frames.clear()
        self._systems.clear()


def verdict_first_tokens(tokenizer: Any, words: tuple[str, ...]) -> dict[str, int] | None:
    """First token id of each verdict word, or None if two words share one.

    The answer starts right after the assistant header's newline, so each word is tokenized on
    its own (no leading space), as it appears there.
    """
    firsts: dict[str, int] = {}
    for w in words:
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if toks:
            firsts[w] = int(toks[0])
    if len(firsts) == len(words) == len(set(firsts.values())):
        return firsts
    log.warning("verdict words %s share a first token; no verdict_probs", words)
    return None


def _truncate(prep: Prepared, n: int) -> Prepared:
    """The first ``n`` tokens of a prepared prompt (a prefix to compute and cache alone)."""
    return Prepared(
        ids=prep.ids[:n],
        positions=prep.positions[:, :n],
        next_position=int(prep.positions[:, :n].max()) + 1 if n else 0,
        images=[s for s in prep.images if s.start < n],
        prefixes=[(k, m) for k, m in prep.prefixes if m <= n],
    )


def _run_starts(types: np.ndarray) -> list[int]:
    """Start index of each run of image tokens."""
    is_image = types == 1
    if not is_image.any():
        return []
    edges = np.flatnonzero(is_image & ~np.concatenate([[False], is_image[:-1]]))
    return [int(e) for e in edges]


def _digest(ids: np.ndarray, extra: Sequence[str] = ()) -> str:
    h = hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=16)
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
