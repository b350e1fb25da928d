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

"""Proposals waiting for the judge, and the checks in flight, as a plain object.

No rclpy here. guard_node judges `guard/proposals` one at a time, in arrival order, on a thread
of its own; `Pending` is the queue between the subscription and that thread, bounded by
`max_waiting_proposals` (one beyond it is refused, and the node answers it at once with an
audited veto), and the count of every check not yet answered (queued, being judged, or a
`guard/check` call), which deactivation waits on so no decision is lost.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

T = TypeVar('T')


class Pending(Generic[T]):
    """The proposal queue (with a stop marker) and the in-flight count.

    Thread-safe: the executor's thread offers, the judging thread takes, the service thread
    counts its own checks.
    """

    def __init__(self, depth: int = 100) -> None:
        """Accept up to `depth` waiting proposals (see `reopen`)."""
        self._cond = threading.Condition()
        self._inflight = 0
        self.depth = depth
        self._queue: queue.Queue[T | None] = queue.Queue()

    @property
    def inflight(self) -> int:
        """Checks taken in and not yet answered."""
        with self._cond:
            return self._inflight

    def reopen(self, depth: int) -> queue.Queue[T | None]:
        """Start a new queue (activate) and return it, for the judging thread to `take` from."""
        self.depth = depth
        self._queue = queue.Queue()
        return self._queue

    def offer(self, item: T) -> int | None:
        """Queue `item`, or refuse it when `depth` are already waiting.

        Either way it counts as in flight until `done` is called for it.

        Returns:
            None when queued; else how many were waiting (the caller answers it now).
        """
        with self._cond:
            behind = self._inflight
            self._inflight += 1
        if behind < self.depth:
            self._queue.put(item)
            return None
        return behind

    def begin(self) -> None:
        """Count a check taken in outside the queue (a `guard/check` call)."""
        with self._cond:
            self._inflight += 1

    def done(self) -> None:
        """One check answered (queued, refused or a service call)."""
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Let the judging thread stop once what is queued now is answered (deactivate)."""
        self._queue.put(None)

    def wait_idle(self, per_check_s: float) -> bool:
        """Wait until every check is answered, `per_check_s` per check in flight at most.

        Returns:
            True when none is in flight any more.
        """
        with self._cond:
            limit = per_check_s * max(1, self._inflight)
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=limit)
