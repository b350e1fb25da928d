"""Time on the wire: `builtin_interfaces/Time` (sec, nanosec) kept as integer nanoseconds.

Float seconds cannot hold an epoch time to the nanosecond (a double has 53 bits; epoch
nanoseconds need 61), so a stamp that goes through them comes back wrong: 123456789 ns after
an epoch second returns as 123456768. Front ends therefore keep the integer and republish
it; float seconds are only for the decision schema's `frame_stamp` and for frame ages, where
a microsecond is plenty.
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Any, overload

NS_PER_S = 1_000_000_000


class InvalidStamp(ValueError):
    """A stamp that is not a valid `builtin_interfaces/Time` (the reason in words)."""


def time_to_ns(stamp: Any) -> int:
    """Nanoseconds of a `builtin_interfaces/Time` (any object with `sec` and `nanosec`).

    Raises:
        InvalidStamp: nanosec outside [0, 1e9) (the message's own range, which rclpy and the
            bag readers do not enforce: sec 5 and nanosec 3e9 would read as 8 s, a frame
            looking seconds fresher than it is), negative seconds (no ROS clock reads one), or
            fields that are not integers.
    """
    try:  # index(): ints and numpy's integer scalars, never a float or text
        sec = operator.index(getattr(stamp, "sec", 0))
        nanosec = operator.index(getattr(stamp, "nanosec", 0))
    except TypeError:
        raise InvalidStamp(
            f"stamp (sec {getattr(stamp, 'sec', 0)!r:.40}, nanosec "
            f"{getattr(stamp, 'nanosec', 0)!r:.40}) is not a ROS time: its fields must be "
            "integers") from None
    if sec < 0 or not 0 <= nanosec < NS_PER_S:
        raise InvalidStamp(
            f"stamp (sec {sec}, nanosec {nanosec}) is not a valid ROS time: nanosec must be "
            "below 1e9 and sec not negative")
    return sec * NS_PER_S + nanosec


def header_stamp_ns(header: Any) -> int | None:
    """Nanoseconds of a `std_msgs/Header` stamp; None when the header or its stamp is unset
    (zero: the sender did not say when).

    Raises:
        InvalidStamp: the stamp is set but not a valid ROS time (see `time_to_ns`).
    """
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    ns = time_to_ns(stamp)
    return ns or None


def ns_to_time(ns: int) -> tuple[int, int]:
    """`(sec, nanosec)` of a `builtin_interfaces/Time`; nanosec always in [0, 1e9)."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


@overload
def ns_to_seconds(ns: int) -> float: ...
@overload
def ns_to_seconds(ns: None) -> None: ...
@overload
def ns_to_seconds(ns: int | None) -> float | None: ...
def ns_to_seconds(ns: int | None) -> float | None:
    """Float seconds of `ns`, correctly rounded (Python divides integers exactly)."""
    return None if ns is None else int(ns) / NS_PER_S


def seconds_to_ns(seconds: float | None) -> int | None:
    """The nanosecond nearest to float `seconds`; None for None, NaN or infinity.

    Only for times that exist as float seconds alone (a clock read as a float, a stamp from
    JSON); a stamp that arrived as (sec, nanosec) keeps its integer instead.
    """
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(Fraction(seconds) * NS_PER_S)


__all__ = [
    "NS_PER_S",
    "InvalidStamp",
    "header_stamp_ns",
    "ns_to_seconds",
    "ns_to_time",
    "seconds_to_ns",
    "time_to_ns",
]
