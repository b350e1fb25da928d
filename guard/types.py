"""Schemas shared by every front end: frames, proposals, hazards and decisions.

`Decision` serialises to exactly the decision schema of the design contract (plus a few
extra fields that outside checks may ignore). What was decided (`verdict`) is kept apart
from whether the check ran (`status`).
"""

from __future__ import annotations

import time
import uuid
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class Verdict(str, Enum):
    """What may happen to the action. Ordered from least to most restrictive."""

    ALLOW = "allow"
    ANNOTATE = "annotate"
    VETO = "veto"

    @property
    def rank(self) -> int:
        return _VERDICT_RANK[self]

    @classmethod
    def most_restrictive(cls, *verdicts: Verdict) -> Verdict:
        """The most restrictive of `verdicts` (veto > annotate > allow)."""
        if not verdicts:
            raise ValueError("most_restrictive() needs at least one verdict")
        return max(verdicts, key=lambda v: v.rank)


_VERDICT_RANK = {Verdict.ALLOW: 0, Verdict.ANNOTATE: 1, Verdict.VETO: 2}


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


class ActionProposal(BaseModel):
    """An action an agent or planner wants to run: a tool name, what it does, its arguments."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_id)
    name: str
    description: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)
    stamp: float | None = None

    def as_text(self) -> str:
        """The action as the judge reads it."""
        import json

        parts = [self.description.strip() or self.name]
        if self.description.strip():
            parts.append(f"(tool: {self.name})")
        if self.arguments:
            parts.append("arguments: " + json.dumps(self.arguments, sort_keys=True, default=str))
        return " ".join(parts)


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
    # Beyond the contract's minimum: what was judged and under which mode.
    proposal_id: str = ""
    mode: Literal["enforce", "shadow"] = "enforce"
    rules: list[str] = Field(default_factory=list)
    error: str | None = None

    @property
    def blocks(self) -> bool:
        """True when the action must not run (a veto in enforce mode)."""
        return self.verdict is Verdict.VETO and self.mode == "enforce"

    def to_json(self) -> str:
        return self.model_dump_json()
