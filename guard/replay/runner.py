"""The replay loop: judge each recorded proposal against the frames that existed at its time.

A proposal recorded at bag time t sees the newest `image.max_frames` frames recorded at or
before t, never a later one, and is judged with `now=t`, so the policy's frame-age limit
measures bag time. A proposal is held back until a message later than t has been read, so a
frame with the same timestamp stored after it still counts. Proposals are judged one at a time,
in recorded order.

Fail closed on damaged input: a proposal that cannot be read, or whose newest frame does not
decode, is a `guard.reject(..., invalid_input)` veto, recorded and audited like any other
decision; the damage is also listed in the summary. Nothing in the episode can crash the loop.

With ``model.rationale: async`` the decisions come back before their rationales; the replay
waits for the guard's pending rationales (`Guard.wait_rationales`, bounded by
``rationale_timeout_s``) before it writes anything, and fills each decision's hazards and
rationale in from its finished rationale (`Judgement.rationale`), so the report reads like a
``sync`` run's. Timings come from the `Judgement` too: the audit log is written, never read.
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guard.errors import InvalidInputError
from guard.replay.episode import (
    TRUNCATED,
    UNDECODABLE_FRAME,
    Episode,
    Event,
    FrameEvent,
    ProposalEvent,
    open_episode,
)
from guard.replay.msgs import printable
from guard.replay.report import (
    Judged,
    annotate_frame,
    build_summary,
    decision_record,
    render_html,
)
from guard.types import Status

if TYPE_CHECKING:
    from guard.core import Guard, Judgement, RationaleDone

DECISIONS_FILE = "decisions.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
# Frames kept for proposals that arrive out of order; in-order episodes need max_frames.
FRAME_BUFFER = 64
# Inline frames in report.html beyond this many decisions are left out (the page stays usable).
MAX_REPORT_IMAGES = 1000
# How long the replay waits for async rationales after the last decision, in seconds.
RATIONALE_TIMEOUT_S = 600.0
# Fields of a `rationale` audit record kept with the decision in decisions.jsonl.
_RATIONALE_FIELDS = ("answer_verdict", "answer_risk", "agrees", "error")


@dataclass
class ReplayResult:
    """What `replay` produced: the summary (as written) and where the files are."""

    summary: dict[str, Any]
    out_dir: Path
    judged: list[Judged]

    @property
    def decisions_path(self) -> Path:
        return self.out_dir / DECISIONS_FILE

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_FILE


def _progress(total: int | None, enabled: bool | None) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: a bar on a terminal, nothing in logs and CI
    return tqdm(total=total, desc="replay", unit="proposal", file=sys.stderr,
                disable=None if enabled is None else not enabled)


def _attach_rationale(j: Judged, rec: dict[str, Any]) -> None:
    """Fill a verdict-only decision's hazards and rationale in from its finished rationale
    (the fields of its audit record)."""
    from guard.types import Hazard

    j.async_rationale = {k: rec[k] for k in _RATIONALE_FIELDS if k in rec}
    if "rationale" not in rec:  # not generated, or unparseable: the decision stays as made
        return
    try:
        hazards = [Hazard.model_validate(h) for h in rec.get("hazards") or []]
    except ValueError:
        hazards = list(j.decision.hazards)
    j.decision = j.decision.model_copy(update={"rationale": rec["rationale"],
                                               "hazards": hazards})


class _Loop:
    def __init__(self, guard: Guard, episode: Episode, limit: int | None, bar: Any) -> None:
        self.guard, self.episode, self.limit, self.bar = guard, episode, limit, bar
        self.max_frames = guard.config.image.max_frames
        self.frames: list[FrameEvent] = []  # sorted by t_ns, at most FRAME_BUFFER
        self.pending: list[ProposalEvent] = []
        self.judged: list[Judged] = []
        self.frame_times: list[int] = []
        self.broken_times: list[int] = []
        self.t_first: int | None = None
        self.t_last: int | None = None
        self.stopped_at_limit = False

    def full(self) -> bool:
        return self.limit is not None and len(self.judged) >= self.limit

    def feed(self, event: Event) -> None:
        t = event.t_ns
        self.t_first = t if self.t_first is None else min(self.t_first, t)
        self.t_last = t if self.t_last is None else max(self.t_last, t)
        if self.pending and t > self.pending[0].t_ns:
            self.flush(before=t)
        if isinstance(event, FrameEvent):
            keys = [f.t_ns for f in self.frames]
            self.frames.insert(bisect.bisect_right(keys, t), event)
            del self.frames[:-FRAME_BUFFER]
            self.frame_times.append(t)
            if event.error is not None:
                self.broken_times.append(t)
        else:
            self.pending.append(event)

    def flush(self, before: int | None = None) -> None:
        """Judge pending proposals older than `before` (all with None)."""
        keep = []
        for p in sorted(self.pending, key=lambda e: e.t_ns):
            if before is not None and p.t_ns >= before:
                keep.append(p)
            elif not self.full():
                self.judge(p)
        self.pending = keep

    def judge(self, event: ProposalEvent) -> None:
        keys = [f.t_ns for f in self.frames]
        visible = self.frames[: bisect.bisect_right(keys, event.t_ns)][-self.max_frames :]
        newest = visible[-1] if visible else None
        frame_stamp = newest.stamp if newest else None
        proposal, now = event.proposal, event.t_ns / 1e9
        checked, note, pixels = False, "", None
        judged_frame: dict[str, Any] | None = None
        timings: dict[str, float] | None = None
        rationale: Future[RationaleDone] | None = None
        frames_info = [{"topic": f.topic, "t": f.t_ns / 1e9, "stamp": f.stamp} for f in visible]
        if event.error is not None:
            decision = self.guard.reject(proposal, Status.INVALID_INPUT,
                                         f"proposal cannot be judged: {event.error}",
                                         frame_stamp=frame_stamp)
            note = "proposal unreadable"
        else:
            frames, error = [], None
            for f in visible:
                try:
                    frames.append(self._frame(f))
                except InvalidInputError as exc:
                    error = str(exc)
                    if not f.reported:
                        f.reported = True
                        self.episode.add_damage(UNDECODABLE_FRAME, error, f.topic, f.t_ns)
            if error is not None:
                decision = self.guard.reject(proposal, Status.INVALID_INPUT, error,
                                             frame_stamp=frame_stamp)
                note = "frame unreadable"
            else:
                judgement = self._check(frames or None, proposal, now, frame_stamp)
                decision, checked = judgement.decision, True
                timings, rationale = judgement.timings_ms or None, judgement.rationale
                pixels = frames[-1].image if frames else None
                if newest is not None and pixels is not None:
                    stamp_ns = newest.header_stamp_ns
                    judged_frame = {
                        "topic": newest.topic, "t_ns": newest.t_ns,
                        # a JSONL frame has no header: it is written with its time as stamp
                        "stamp_ns": newest.t_ns if stamp_ns is None else stamp_ns,
                        "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
                    }
                if not frames:
                    note = "no frame yet"
        j = Judged(index=len(self.judged) + 1, t_ns=event.t_ns, topic=event.topic,
                   proposal=proposal, label=event.label, decision=decision, checked=checked,
                   frames=frames_info, timings_ms=timings)
        j.rationale = rationale
        j.judged_frame = judged_frame
        if len(self.judged) < MAX_REPORT_IMAGES:
            j.thumbnail = annotate_frame(pixels, decision, event.label, note)
        self.judged.append(j)
        if self.bar is not None:
            self.bar.update(1)

    def _check(self, frames: Any, proposal: Any, now: float,
               frame_stamp: float | None) -> Judgement:
        """`guard.judge`, and a fail-closed error veto should it raise anyway: one proposal's
        failure must not end the replay of the others."""
        from guard.core import Judgement

        try:
            return self.guard.judge(frames, proposal, now=now)
        except Exception as exc:
            return Judgement(self.guard.reject(
                proposal, Status.ERROR, f"the check raised {type(exc).__name__}: {exc}",
                frame_stamp=frame_stamp))

    def _frame(self, f: FrameEvent) -> Any:
        from guard.types import Frame

        return Frame(image=f.pixels(), stamp=f.stamp, source=f"{f.topic}@{f.t_ns / 1e9:.3f}")


def _events(episode: Episode) -> Iterator[Event]:
    """The episode's events; a reader that breaks down ends the stream as a truncation."""
    it = episode.events()
    while True:
        try:
            event = next(it)
        except StopIteration:
            return
        except Exception as exc:
            episode.add_damage(TRUNCATED, f"reading stopped: {type(exc).__name__}: {exc}")
            return
        yield event


def replay(
    episode: str | Path | Episode,
    out_dir: str | Path,
    *,
    guard: Guard,
    image_topic: str | None = None,
    proposal_topic: str | None = None,
    limit: int | None = None,
    progress: bool | None = None,
    rationale_timeout_s: float | None = RATIONALE_TIMEOUT_S,
    write_mcap: bool = False,
) -> ReplayResult:
    """Replay an episode through `guard` and write decisions.jsonl, summary.json, report.html.

    Args:
        episode: A path (rosbag2 folder, .mcap, .db3, .jsonl or a folder with episode.jsonl)
            or an opened `Episode`.
        out_dir: Output folder (created; the three files in it are overwritten).
        guard: The `guard.core.Guard` to judge with. Its audit log gets every decision.
        image_topic: Image topic in a bag (default /camera/image_raw).
        proposal_topic: Proposal topic in a bag (default /guard/proposals).
        limit: Judge at most this many proposals.
        progress: Show a progress bar (None: only on a terminal).
        rationale_timeout_s: How long to wait for async rationales after the last decision
            (None: as long as they take). Those still running are reported as pending.
        write_mcap: Also write MCAP_FILE: the episode's streams, the decisions and Foxglove
            annotations of each judged frame (`guard.replay.foxglove`); the episode is read a
            second time for it. Its counts are in summary.json under `mcap`.

    Returns:
        The summary and the list of judged proposals.

    Raises:
        UsageError: the episode does not exist, holds no proposals, or a topic given is not
            in it or holds the wrong message type (see `open_episode`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(episode, Episode):
        image_cfg = guard.config.image
        episode = open_episode(
            episode, image_topic=image_topic, proposal_topic=proposal_topic,
            max_input_pixels=image_cfg.max_input_pixels, max_file_bytes=image_cfg.max_file_bytes,
        )
    total = episode.expected_proposals
    if limit is not None and total is not None:
        total = min(total, limit)
    bar = _progress(total, progress)
    t_start = time.perf_counter()
    loop = _Loop(guard, episode, limit, bar)
    interrupted: BaseException | None = None
    try:
        for event in _events(episode):
            loop.feed(event)
            if loop.full():
                loop.stopped_at_limit = True
                break
        loop.flush()
    except KeyboardInterrupt as exc:  # write what was judged, then stop as asked
        interrupted = exc
        episode.notes.append(f"interrupted after {len(loop.judged)} proposals")
    except Exception as exc:  # a fault of ours or of the guard: report what was judged, re-raise
        interrupted = exc
        episode.notes.append(
            f"replay stopped after {len(loop.judged)} proposals: {type(exc).__name__}: "
            f"{printable(str(exc))}"
        )
    finally:
        episode.close()
        if bar is not None:
            bar.close()
    wall_s = time.perf_counter() - t_start
    # Rationales still being written (rationale: async) belong in the report: wait for them
    # unless the user interrupted.
    wait = getattr(guard, "wait_rationales", None)
    t_wait = time.perf_counter()
    all_done = True
    if callable(wait) and interrupted is None:
        all_done = bool(wait(rationale_timeout_s))
    wait_s = time.perf_counter() - t_wait
    t0 = loop.t_first if loop.t_first is not None else 0
    # backslashreplace: text UTF-8 cannot hold (a lone surrogate) is written as its JSON
    # escape rather than ending the replay before its summary is written
    with (out / DECISIONS_FILE).open("w", encoding="utf-8", errors="backslashreplace") as fh:
        for j in loop.judged:
            if j.rationale is not None and j.rationale.done():
                _attach_rationale(j, j.rationale.result().record)
            fh.write(json.dumps(decision_record(j, t0), ensure_ascii=False) + "\n")
    t_range = (t0, loop.t_last) if loop.t_last is not None else None
    mcap_counts = None
    if write_mcap and interrupted is None:
        mcap_counts = _write_mcap(episode, guard, loop.judged, out, t0)
    summary = build_summary(
        episode=episode, judged=loop.judged, n_frames=len(loop.frame_times), t_range=t_range,
        wall_s=wall_s, guard=guard, limit=limit, stopped_at_limit=loop.stopped_at_limit,
        rationales={"all_done": all_done, "wait_s": wait_s}, interrupted=interrupted is not None,
    )
    if mcap_counts is not None:
        summary["mcap"] = mcap_counts
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    page = render_html(summary, loop.judged, loop.frame_times, loop.broken_times, t0,
                       loop.t_last if loop.t_last is not None else t0)
    (out / REPORT_FILE).write_text(page, encoding="utf-8", errors="backslashreplace")
    if interrupted is not None:
        raise interrupted
    return ReplayResult(summary=summary, out_dir=out, judged=loop.judged)


def _write_mcap(episode: Episode, guard: Guard, judged: list[Judged], out: Path,
                t0: int) -> dict[str, Any]:
    """Write the verdict MCAP from a second read of `episode` (same reader, same topics)."""
    from guard.replay.foxglove import MCAP_FILE, write_mcap

    image_cfg = guard.config.image
    again = open_episode(
        episode.path,
        image_topic=episode.image_topic if episode.format != "jsonl" else None,
        proposal_topic=episode.proposal_topic if episode.format != "jsonl" else None,
        max_input_pixels=image_cfg.max_input_pixels, max_file_bytes=image_cfg.max_file_bytes,
    )
    try:
        return write_mcap(again, judged, out / MCAP_FILE, t0).to_json()
    finally:
        again.close()


__all__ = ["DECISIONS_FILE", "REPORT_FILE", "SUMMARY_FILE", "ReplayResult", "replay"]
