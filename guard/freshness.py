"""The one freshness rule: is a frame recent enough to judge an action on?

Every front end (the core's check, the ROS node's cmd_vel gate, replay) asks this function and
no other. A frame is fresh only when its stamp is a finite number, it is at most
``max_age_ms`` behind the guard's clock and at most ``max_skew_ms`` ahead of it. A stamp ahead
of the clock is not "very fresh": it means the camera's clock and ours disagree, and then
nothing bounds how old the picture really is (one frame stamped an hour ahead would otherwise
stay "fresh" for an hour after the camera stopped).

Statuses: no frame at all is ``no_frame``; a frame whose time cannot be trusted (no stamp,
NaN/inf, too far ahead) or that is too old is ``stale_frame``. A non-finite or non-numeric
guard clock is an ``error``: the guard itself cannot tell time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from guard.types import Status


@dataclass(frozen=True)
class Freshness:
    """The rule's answer: ``status`` is None when the frame may be judged."""

    status: Status | None
    reason: str = ""
    age_ms: float | None = None

    @property
    def fresh(self) -> bool:
        return self.status is None


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def frame_freshness(
    stamp: float | None,
    now: float,
    *,
    max_age_ms: float | None,
    max_skew_ms: float,
    has_frame: bool = True,
) -> Freshness:
    """Judge a frame's stamp (seconds) against the guard's clock ``now`` (seconds).

    Args:
        stamp: the newest frame's stamp, None when the source gave none.
        now: the guard's clock, on the same time base as ``stamp``.
        max_age_ms: the oldest a frame may be; None switches the age check off (the stamp
            must still be finite if one is given, and not ahead of the clock).
        max_skew_ms: how far ahead of ``now`` a stamp may lie (clock disagreement).
        has_frame: False when there is no frame at all.
    """
    if not has_frame:
        return Freshness(Status.NO_FRAME, "no camera frame to judge")
    if not _finite(now):
        return Freshness(Status.ERROR, f"the guard's clock reads {now!r}, not a finite time")
    if stamp is None:
        if max_age_ms is None:
            return Freshness(None)
        return Freshness(Status.STALE_FRAME, "frame has no timestamp")
    if not _finite(stamp):
        return Freshness(Status.STALE_FRAME, f"frame stamp {stamp!r} is not a finite time")
    age_ms = (float(now) - float(stamp)) * 1000.0
    if not math.isfinite(age_ms):
        return Freshness(Status.STALE_FRAME, f"frame stamp {stamp!r} is not a usable time")
    if -age_ms > max_skew_ms:
        return Freshness(
            Status.STALE_FRAME,
            f"frame is stamped {-age_ms:.0f} ms ahead of the guard's clock, over "
            f"max_clock_skew_ms ({max_skew_ms:g}): the clocks disagree",
            age_ms,
        )
    if max_age_ms is not None and age_ms > max_age_ms:
        return Freshness(
            Status.STALE_FRAME,
            f"frame is {age_ms:.0f} ms old, over max_frame_age_ms ({max_age_ms:g})",
            age_ms,
        )
    return Freshness(None, "", age_ms)
