# Copyright 2026 embodied-guard maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""ROS-message glue of guard_node that needs no rclpy: verdict codes and figures.

Everything that reads a wire format (camera images, stamps, proposals) lives in `guard.wire`,
the adapter the node shares with replay, the frame sources and the middleware.
"""

from __future__ import annotations

import math

# The verdict constants of guard_interfaces/msg/Decision. Jazzy messages do not range-check
# uint8 fields by default, so a wrong mapping would go out silently: it is written once, here.
VERDICT_CODES = {'allow': 0, 'annotate': 1, 'veto': 2}


def verdict_code(verdict: str) -> int:
    """Map a guard verdict to the `Decision` constant (ALLOW=0, ANNOTATE=1, VETO=2).

    Args:
        verdict: 'allow', 'annotate' or 'veto' (a `guard.types.Verdict` works too).

    Returns:
        The uint8 value of `guard_interfaces/msg/Decision.verdict`.

    Raises:
        ValueError: for anything else; never guessed, since a wrong code could read as ALLOW.
    """
    key = getattr(verdict, 'value', verdict)
    try:
        return VERDICT_CODES[key]
    except KeyError:
        raise ValueError(f'unknown verdict {verdict!r}') from None


def percentile(values: list[float], q: float) -> float | None:
    """Return the nearest-rank q-th percentile of `values` (q in 0..100); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
