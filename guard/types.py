"""Schemas shared by every front end: frames, proposals, hazards and decisions.

`Decision` serialises to exactly the decision schema of the design contract (plus a few
extra fields that outside checks may ignore). What was decided (`verdict`) is kept apart
from whether the check ran (`status`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Verdict(str, Enum):
    """What may happen to the action. Ordered from least to most restrictive."""

    ALLOW = "allow"
    ANNOTATE = "annotate"
    VETO = "veto"

    @property
    def rank(self) -> int:
        return _VERDICT_RANK[self]

    @property
    def word(self) -> str:
        """The verdict as the judge writes it (`VERDICT_WORDS`)."""
        return self.name

    @classmethod
    def most_restrictive(cls, *verdicts: Verdict) -> Verdict:
        """The most restrictive of `verdicts` (veto > annotate > allow)."""
        if not verdicts:
            raise ValueError("most_restrictive() needs at least one verdict")
        return max(verdicts, key=lambda v: v.rank)


_VERDICT_RANK = {Verdict.ALLOW: 0, Verdict.ANNOTATE: 1, Verdict.VETO: 2}

VERDICT_WORDS: tuple[str, ...] = tuple(v.word for v in Verdict)
"""The verdict words as the judge writes them, ALLOW, ANNOTATE, VETO, defined here only: the
prompt templates (``{allow}`` ...), the parser, every backend's verdict scoring, the world's
and training's target answers and the test doubles take them from here."""


class Status(str, Enum):
    """Whether the check could run. Anything but OK is a veto unless the policy says otherwise."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    STALE_FRAME = "stale_frame"
    NO_FRAME = "no_frame"
    INVALID_INPUT = "invalid_input"


class Frame(BaseModel):
    """One camera image with the time it was taken.

    `image` is an RGB uint8 array of shape (H, W, 3). `stamp` is in seconds on the same clock
    the guard compares against (wall time by default, bag time in replay); None means unknown,
    which the frame-age check treats as stale.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    image: np.ndarray
    stamp: float | None = None
    source: str = ""
    # The same time as integer nanoseconds where the source had it (a ROS header): carried to
    # `Decision.frame_stamp_ns` and the audit record, since float seconds lose it.
    stamp_ns: int | None = None

    @field_validator("image")
    @classmethod
    def _rgb_uint8(cls, v: np.ndarray) -> np.ndarray:
        if not isinstance(v, np.ndarray) or v.dtype != np.uint8 or v.ndim != 3 or v.shape[2] != 3:
            shape = getattr(v, "shape", None)
            dtype = getattr(v, "dtype", type(v).__name__)
            raise ValueError(f"image must be an RGB uint8 array (H, W, 3), got {dtype} {shape}")
        if v.shape[0] == 0 or v.shape[1] == 0:
            raise ValueError(f"image is empty: shape {v.shape}")
        return v

    @field_validator("stamp", mode="before")
    @classmethod
    def _seconds(cls, v: Any) -> Any:
        return stamp_seconds(v)

    @field_validator("stamp_ns", mode="before")
    @classmethod
    def _time_ns(cls, v: Any) -> Any:
        return int64_ns(v, "stamp_ns")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    @classmethod
    def from_path(cls, path: str | Path, stamp: float | None = None, **kw: Any) -> Frame:
        """Decode an image file; the stamp defaults to now (the file is the current view)."""
        from guard.imaging import decode_image_file

        image = decode_image_file(path, **kw)
        return cls(image=image, stamp=time.time() if stamp is None else stamp, source=str(path))

    @classmethod
    def from_bytes(
        cls, data: bytes, stamp: float | None = None, source: str = "bytes", **kw: Any
    ) -> Frame:
        """Decode an encoded image (JPEG, PNG, ...)."""
        from guard.imaging import decode_image_bytes

        image = decode_image_bytes(data, source=source, **kw)
        return cls(image=image, stamp=time.time() if stamp is None else stamp, source=source)


def new_id() -> str:
    return uuid.uuid4().hex


def stamp_seconds(v: Any) -> Any:
    """A stamp in seconds as the frame-age rule can read it: a bool is no time, and an integer
    beyond a float's range is an infinite time (stale), not an error from deep inside a check.
    Anything else goes to pydantic's own number parsing."""
    if isinstance(v, bool):
        raise ValueError(f"a stamp is seconds as a number, got {v!r}")
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    return v


def int64_ns(v: Any, what: str) -> Any:
    """The rule for integer nanoseconds (a ROS Time fits int64; a bool is not a time)."""
    if isinstance(v, bool) or (isinstance(v, int) and not -(2**63) <= v < 2**63):
        raise ValueError(f"{what} must be int64 nanoseconds, got {short_repr(v)}")
    return v


#: Arguments nested deeper than this are invalid input (a guard must not recurse without end
#: on what an agent sends it; real tool arguments are a few levels deep).
MAX_ARGUMENT_DEPTH = 32
#: Arguments holding more values than this are invalid input: they cannot be rendered within
#: any sensible `policy.max_action_chars` (each value takes at least two characters), and
#: converting a million of them held the caller for seconds past its deadline.
MAX_ARGUMENT_VALUES = 10_000
#: The longest proposal id (UUIDs, tool-call and ROS ids are tens of characters).
MAX_ID_CHARS = 1024
_MAX_REPR = 200


def safe_text(text: str) -> str:
    """`text` with whatever UTF-8 cannot encode (lone surrogates) written as escapes, so it can
    be logged, hashed and sent anywhere."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _type_name(obj: Any) -> str:
    try:
        return str(type(obj).__name__)
    except Exception:  # a metaclass that hides its own name
        return "object"


def short_repr(obj: Any) -> str:
    """`repr(obj)`, made encodable and cut to 200 characters; a description when repr fails."""
    try:
        text = repr(obj)
    except Exception as exc:  # a hostile __repr__, an int over Python's 4300-digit limit
        text = f"<{_type_name(obj)}: repr failed: {_type_name(exc)}>"
    if not isinstance(text, str):  # pragma: no cover - repr() itself insists on str
        text = f"<{_type_name(obj)}>"
    text = safe_text(text)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


class _Refused(ValueError):
    """Arguments `jsonable` was told to refuse rather than describe."""


def validation_line(what: str, exc: ValidationError) -> str:
    """The first error of a failed validation of `what` (proposal, frame) as one line, for
    every front end's invalid_input decision (pydantic's own first line names no field)."""
    err = exc.errors()[0]
    where = ".".join(map(str, err["loc"])) or what
    return f"{what} {where}: {err['msg'].removeprefix('Value error, ')}"


class _TooLarge(_Refused):
    """Arguments past a bound: nested too deep (or referring to themselves), too many values."""


def jsonable(
    value: Any, *, max_depth: int = MAX_ARGUMENT_DEPTH, cut: bool = False,
    max_values: int | None = None, finite: bool = False,
) -> Any:
    """`value` as plain JSON data, for the proposal the judge reads and the audit log stores.

    Objects JSON cannot hold become short descriptions (arrays and bytes are summarised, not
    dumped into a prompt), text is made encodable, non-finite floats become strings. Total:
    whatever an object's own methods do (a ``__str__`` or ``__repr__`` that raises, a dict
    subclass whose ``items`` raises, an int over Python's int-to-text limit), the result is
    plain data; subclasses of str, int, float and dict are read through the base type's own
    methods, so their overrides never run.

    Args:
        value: what to convert.
        max_depth: the deepest nesting accepted.
        cut: replace what lies deeper (or beyond `max_values`) by a marker instead of raising
            (for logging what was refused).
        max_values: the most values (containers included) converted; None: no bound.
        finite: refuse a non-finite number (NaN, an infinity) instead of writing it as text
            (a proposal: the judge cannot tell a NaN target from the word "nan").

    Raises:
        ValueError: `value` nests deeper than `max_depth` levels (or refers to itself), or
            holds more than `max_values` values, or (`finite`) a non-finite number.
    """
    budget = [math.inf if max_values is None else max_values]

    def key_text(key: Any) -> str:
        return safe_text(str.__str__(key)) if isinstance(key, str) else short_repr(key)

    def spent() -> bool:
        """True when no value is left to convert: then a marker ends the container (cut), or
        the arguments are refused."""
        if budget[0] > 0:
            return False
        if cut:
            return True
        raise _TooLarge(f"arguments hold more than {max_values} values")

    def pairs_of(pairs: Iterable[tuple[Any, Any]], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if spent():
                out["<cut>"] = f"<more than {max_values} values>"
                break
            out[key_text(k)] = walk(v, depth + 1)
        return out

    def items_of(items: Iterable[Any], depth: int) -> list[Any]:
        out: list[Any] = []
        for v in items:
            if spent():
                out.append(f"<more than {max_values} values>")
                break
            out.append(walk(v, depth + 1))
        return out

    def walk(obj: Any, depth: int) -> Any:
        if depth > max_depth:
            if cut:
                return f"<nested deeper than {max_depth} levels>"
            raise _TooLarge(
                f"arguments nest deeper than {max_depth} levels (or refer to themselves)"
            )
        budget[0] -= 1
        kind = type(obj)
        if kind is str:  # the common cases, exactly typed: nothing of theirs can be overridden
            return safe_text(obj)
        if obj is None or kind is bool or (kind is float and math.isfinite(obj)):
            return obj
        if kind is int and obj.bit_length() <= 1000:
            return obj
        try:
            return convert(obj, depth)
        except _Refused:
            raise
        except RecursionError:
            if cut:
                return f"<nested deeper than {max_depth} levels>"
            raise _TooLarge(f"arguments nest deeper than {max_depth} levels") from None
        except Exception as exc:  # an object whose own methods fail: described, never raised
            return f"<{_type_name(obj)}: unreadable ({_type_name(exc)})>"

    def convert(obj: Any, depth: int) -> Any:
        if obj is None or isinstance(obj, bool):
            return obj
        if isinstance(obj, int):
            number = int.__int__(obj)  # a plain int, whatever the subclass overrides
            # json cannot write ints of over 4300 digits
            return short_repr(number) if number.bit_length() > 1000 else number
        if isinstance(obj, float):
            real = float.__float__(obj)
            if math.isfinite(real):
                return real
            if finite:  # the wire readers' words (guard.wire.proposals)
                raise _Refused(f"arguments hold a non-finite number ({float.__repr__(real)})")
            return float.__repr__(real)
        if isinstance(obj, str):
            return safe_text(str.__str__(obj))
        if isinstance(obj, dict):
            return pairs_of(dict.items(obj), depth)
        if isinstance(obj, (list, tuple, set, frozenset)):
            return items_of(obj, depth)
        if isinstance(obj, Mapping):
            return pairs_of(obj.items(), depth)
        shape = getattr(obj, "shape", None)
        if shape is not None and hasattr(obj, "dtype"):
            if shape == () and hasattr(obj, "item"):  # a numpy scalar
                return walk(obj.item(), depth)
            return f"<array shape={tuple(shape)} dtype={obj.dtype}>"
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return f"<{len(obj)} bytes>"
        if isinstance(obj, BaseModel):
            return walk(obj.model_dump(mode="python"), depth)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return walk({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, depth)
        return short_repr(obj)

    try:
        return walk(value, 0)
    except RecursionError:
        raise ValueError(f"arguments nest deeper than {max_depth} levels") from None


class ActionProposal(BaseModel):
    """An action an agent or planner wants to run: a tool name, what it does, its arguments.

    Validation lives here, so every front end refuses the same things: a blank tool name,
    arguments nested deeper than `MAX_ARGUMENT_DEPTH` or holding a non-finite number (once
    made text, a NaN could no longer be told from the word). Text is made encodable and
    arguments plain JSON (see `jsonable`) on construction. What the decision core alone
    refuses to judge (a blank id, control characters in the tool name) is constructed here,
    so a front end's stand-in for a refused call can still be built and audited.
    """

    model_config = ConfigDict(extra="forbid")

    # An id names the proposal in the decision and the log: 5 MB of one was echoed whole.
    id: str = Field(default_factory=new_id, max_length=MAX_ID_CHARS)
    name: str
    description: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)
    stamp: float | None = None

    @field_validator("id", "description")
    @classmethod
    def _encodable(cls, v: str) -> str:
        return safe_text(v)

    @field_validator("name")
    @classmethod
    def _tool_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the tool name is empty")
        return safe_text(v)

    @field_validator("arguments", mode="before")
    @classmethod
    def _plain_arguments(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        return jsonable(v, max_values=MAX_ARGUMENT_VALUES, finite=True)

    @field_validator("stamp")
    @classmethod
    def _finite_stamp(cls, v: float | None) -> float | None:
        return v if v is None or math.isfinite(v) else None

    def as_text(self, action_format: str | None = None) -> str:
        """The action as the judge reads it: `guard.prompting.action.render_action`, the one
        rendering every front end and training share.

        Args:
            action_format: A format identifier (`guard.prompting.action.ACTION_FORMATS`); None
                is the default, ``tool_call_v1``: "description (tool: name) arguments: {...}".
        """
        from guard.prompting.action import render_action  # guard.prompting imports this module

        return render_action(self.name, self.description, self.arguments, action_format)


class Hazard(BaseModel):
    """One projected consequence of running the action in this scene."""

    category: str
    description: str
    consequence: str = ""
    severity: float = Field(default=1.0, ge=0.0, le=1.0)


class Decision(BaseModel):
    """The guard's answer for one proposal (decision schema contract)."""

    id: str = Field(default_factory=new_id)
    verdict: Verdict
    status: Status
    risk: float = Field(ge=0.0, le=1.0)
    hazards: list[Hazard] = Field(default_factory=list)
    rationale: str = ""
    latency_ms: float = 0.0
    model: str = "none"
    policy: str = ""
    frame_stamp: float | None = None
    # The same time as integer nanoseconds, where the front end had it (a ROS header stamp):
    # float seconds cannot hold an epoch time to the nanosecond, and ROS gets its Time back.
    frame_stamp_ns: int | None = None
    # Beyond the contract's minimum: what was judged and under which mode.
    proposal_id: str = ""
    mode: Literal["enforce", "shadow"] = "enforce"
    rules: list[str] = Field(default_factory=list)
    error: str | None = None

    @field_validator("frame_stamp")
    @classmethod
    def _finite_frame_stamp(cls, v: float | None) -> float | None:
        # A NaN/inf stamp was never fresh (guard/freshness.py); JSON cannot carry it either.
        return v if v is None or math.isfinite(v) else None

    @field_validator("frame_stamp_ns", mode="before")
    @classmethod
    def _time_ns(cls, v: Any) -> Any:
        # A ROS Time (int32 sec, uint32 nanosec) fits int64; a bool is not a time.
        return int64_ns(v, "frame_stamp_ns")

    @property
    def blocks(self) -> bool:
        """True when the action must not run (a veto in enforce mode)."""
        return self.verdict is Verdict.VETO and self.mode == "enforce"

    def to_json(self) -> str:
        return self.model_dump_json()
