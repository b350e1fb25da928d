"""The `Guard`: one decision core behind every front end (ROS node, middleware, replay, bench).

    guard = Guard(load_config("configs/default.yaml"))
    decision = guard.check(Frame.from_path("kitchen.jpg"), ActionProposal(name="stove_on"))
    if decision.blocks: ...

A check that could not run (deadline passed, backend error, unparseable answer, stale or
missing frame, invalid input) is a veto unless the policy says `on_failure: allow`. Every
decision, whatever its status, goes to the audit log before it is returned.

With ``model.rationale: async`` a verdict-first backend answers with the verdict alone and
finishes the rest of the answer in the background; when it is done the guard audits it as a
"rationale" record that names the decision, and hands the completed decision (hazards and
rationale filled in, verdict unchanged) to the callbacks registered with `Guard.on_rationale`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import json
import logging
import math
import numbers
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from guard.audit import AuditLog
from guard.backends import Backend, JudgeOutput, JudgeRequest, create_backend
from guard.config import AuditConfig, GuardConfig, PolicyConfig
from guard.errors import BackendError, BackendTimeout, ConfigError, GuardError, InvalidInputError
from guard.freshness import frame_freshness
from guard.imaging import check_array, resize_for_judge
from guard.policy import (
    CompiledRule,
    RuleOutcome,
    RulesProgress,
    RulesUnfinished,
    compile_rules,
    decide,
    evaluate_rules,
    failure_verdict,
)
from guard.prompting import (
    DEFAULT_ANSWER_MODE,
    ParseError,
    load_template,
    parse_answer,
    resolve_action_format,
    resolve_template,
)
from guard.prompting.untrusted import imitates_answer
from guard.types import (
    MAX_ARGUMENT_VALUES,
    ActionProposal,
    Decision,
    Frame,
    Status,
    Verdict,
    jsonable,
    safe_text,
    short_repr,
    validation_line,
)

log = logging.getLogger("guard")

FramesArg = Frame | Sequence[Frame] | None
#: A frame source: called inside the check's deadline, returns what `FramesArg` allows.
FrameSource = Callable[[], FramesArg]
ProposalArg = ActionProposal | Mapping[str, Any]
RationaleCallback = Callable[[Decision], None]

_MAX_AUDIT_ANSWER_CHARS = 4096


@dataclass(frozen=True)
class PolicySnapshot:
    """The policy one check applies: its settings, compiled rules and fingerprint, taken
    together when the check starts. `set_policy` swaps the whole of it in one assignment, so
    a check in flight never mixes two policies, and its audit record names the one applied.

    A front end whose check starts before it calls the guard (a ROS node that first waits
    for the proposal's frame under `max_clock_skew_ms`) takes `Guard.policy` when it starts
    and hands it to `judge`/`check`/`reject` as ``policy=``: one policy for the whole check.
    """

    config: PolicyConfig
    rules: list[CompiledRule]
    id: str

    @classmethod
    def of(cls, config: PolicyConfig) -> PolicySnapshot:
        return cls(config, compile_rules(config.rules), config.fingerprint())


@dataclass
class _PendingRationale:
    """An answer still being generated after its decision was made (rationale: async)."""

    future: cf.Future[str]
    verdict_probs: dict[str, float] | None
    rules: RuleOutcome
    policy: PolicySnapshot
    done: cf.Future[RationaleDone] = field(default_factory=cf.Future)


class Guard:
    """Judges action proposals against camera frames under a policy, with a deadline.

    Args:
        config: the validated configuration; defaults if None.
        backend: a ready backend (e.g. a test double); built from `config.model` if None.
        audit: an AuditLog, or None to open `config.audit.path`.
        clock: wall clock used for frame ages when `check(now=...)` is not given.
    """

    def __init__(
        self,
        config: GuardConfig | None = None,
        *,
        backend: Backend | None = None,
        audit: AuditLog | None = None,
        clock: Any = time.time,
    ) -> None:
        self.config = config or GuardConfig()
        self._policy = PolicySnapshot.of(self.config.policy)
        #: The prompt template in use (configured, else the model's trained one).
        self.template_name = resolve_template(self.config.prompt.template, self.config.model.id)
        #: How a proposal becomes the judge's words (configured, else the model's trained one).
        self.action_format = resolve_action_format(
            self.config.prompt.action_format, self.config.model.id
        )
        self._template = load_template(self.template_name)
        # Longer answers are refused before parsing: parsing stays inside the deadline.
        self._max_answer_chars = max(16_384, 32 * self.config.model.max_new_tokens)
        self._clock = clock
        self._executor = cf.ThreadPoolExecutor(
            max_workers=self.config.policy.max_inflight, thread_name_prefix="guard-judge"
        )
        # The rules' own workers: a busy judge never delays an allow or veto rule.
        self._rules_executor = cf.ThreadPoolExecutor(
            max_workers=self.config.policy.max_inflight, thread_name_prefix="guard-rules"
        )
        self._lock = threading.Lock()
        self._rationale_callbacks: list[RationaleCallback] = []
        self._rationales_pending = 0
        self._rationales_idle = threading.Condition()
        self.stats = {"checks": 0, "vetoes": 0, "timeouts": 0, "errors": 0, "abandoned": 0}
        self.audit = audit if audit is not None else AuditLog.from_config(self.config.audit)
        try:
            self.backend = backend if backend is not None else create_backend(self.config)
            if self.config.model.warmup:
                self.warmup()
        except BaseException:
            self._executor.shutdown(wait=False)
            self._rules_executor.shutdown(wait=False)
            self.audit.close()
            raise

    # -- public API ----------------------------------------------------------------------

    @property
    def policy_id(self) -> str:
        return self._policy.id

    @property
    def mode(self) -> str:
        return self._policy.config.mode

    @property
    def policy(self) -> PolicySnapshot:
        """The policy a check starting now applies (immutable; see `PolicySnapshot`)."""
        return self._policy

    def warmup(self) -> float | None:
        """Run one throwaway judgement (a grey 640x480 frame, the configured template) through
        a backend that offers `warmup`, before any deadline runs: the deadline covers
        judging, not loading. Returns its duration in seconds, None when the backend has no
        warm-up. Not audited (no decision is made); a failure is logged, and the first real
        check then meets it again and fails closed."""
        warm = getattr(self.backend, "warmup", None)
        if warm is None:
            return None
        grey = np.full((480, 640, 3), 128, dtype=np.uint8)
        request = JudgeRequest(
            prompt=self._template.render(
                "warm up", (resize_for_judge(grey, self.config.image, self.backend),)
            ),
            max_new_tokens=min(16, self.config.model.max_new_tokens),
        )
        t0 = time.perf_counter()
        try:
            warm(request)
        except Exception as exc:
            log.warning("backend warm-up failed: %s", exc)
        return time.perf_counter() - t0

    def set_mode(self, mode: str) -> None:
        """Switch enforce/shadow at runtime (the policy fingerprint follows)."""
        if mode not in ("enforce", "shadow"):
            raise ConfigError(f"policy.mode = {mode!r}: must be 'enforce' or 'shadow'")
        self.set_policy(mode=mode)

    def set_policy(self, **fields: Any) -> None:
        """Change policy fields at runtime (``deadline_ms``, ``max_frame_age_ms``, ``mode``,
        thresholds, ``rules``): checks that start afterwards use them, and the policy
        fingerprint in the audit records follows. A check already in flight keeps the
        policy it started with, whole, and its record names that one.

        Raises:
            ConfigError: An unknown field, a bad value or rule pattern, or a new
                ``max_inflight`` (the worker pools are sized when the guard starts); the
                policy is left as it was.
        """
        data = {**self.config.policy.model_dump(), **fields}
        try:
            policy = PolicyConfig.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(map(str, err["loc"]))
            raise ConfigError(f"policy.{field} = {fields.get(field, '?')!r}: "
                              f"{err['msg']}") from None
        if policy.max_inflight != self.config.policy.max_inflight:
            raise ConfigError(
                f"policy.max_inflight = {policy.max_inflight}: read when the guard starts "
                f"(its worker pools hold {self.config.policy.max_inflight}); start a new Guard"
            )
        # Compiled before anything changes (a bad pattern leaves the policy as it was), then
        # swapped in one assignment: a check reads `_policy` once, when it starts.
        applied = PolicySnapshot.of(policy)
        self.config = self.config.model_copy(update={"policy": policy})
        self._policy = applied

    def check(
        self,
        frames: FramesArg | FrameSource,
        proposal: ProposalArg,
        *,
        now: float | None = None,
        entered: float | None = None,
        deadline_ms: float | None = None,
        policy: PolicySnapshot | None = None,
    ) -> Decision:
        """`judge`'s decision alone: what a front end on the actuation path needs."""
        return self.judge(
            frames, proposal, now=now, entered=entered, deadline_ms=deadline_ms, policy=policy
        ).decision

    def judge(
        self,
        frames: FramesArg | FrameSource,
        proposal: ProposalArg,
        *,
        now: float | None = None,
        entered: float | None = None,
        deadline_ms: float | None = None,
        policy: PolicySnapshot | None = None,
    ) -> Judgement:
        """Judge one proposal against the latest frame(s). Never raises for what it is given:
        a check that could not run is a fail-closed decision, and every decision is audited
        before it is returned.

        Args:
            frames: A frame, a sequence of frames (oldest first), None, or a frame source (a
                callable returning any of those), which is then called inside the deadline.
            proposal: An `ActionProposal`, or its fields as a mapping (validated here, so a
                bad one is an audited `invalid_input` veto rather than an exception).
            now: The guard's clock for the frame-age check (default: the clock, read once the
                frames are in hand); on the frames' time base.
            entered: The `time.monotonic()` instant the check began, for a front end that
                waited for its frames before calling (default: now). Not a finite number, or
                after now (another clock's reading): an `invalid_input` veto.
            deadline_ms: A shorter deadline for this check alone (a client in a hurry); the
                policy's `deadline_ms` when None or longer. Not a positive number: an
                `invalid_input` veto.
            policy: The policy to apply, taken from `Guard.policy` when the front end's check
                began (default: the guard's policy now). Anything else: an `invalid_input`
                veto under the policy now.

        The deadline (`policy.deadline_ms`) is a wall-clock promise from the moment `check` is
        entered: frame acquisition, resizing, judging and parsing all sit inside it, and an
        answer that arrives late is a timeout veto, whatever delayed it.

        Returns:
            The decision with how it was reached (`Judgement`).
        """
        t0 = time.monotonic()
        trace = _Trace(policy=_snapshot(policy, self._policy))
        deadline, limit_ms = math.inf, trace.policy.config.deadline_ms
        try:
            _given_snapshot(policy)
            t0 = _entered(entered, t0)
            limit_ms = self._deadline_ms(deadline_ms, trace.policy)
            deadline = t0 + limit_ms / 1000.0
            decision = self._check(frames, proposal, now, deadline, limit_ms, trace)
            decision = self._late(decision, deadline, limit_ms, trace)
        except InvalidInputError as exc:
            decision = self._failed(Status.INVALID_INPUT, str(exc), trace.rules, trace.policy)
        except Exception as exc:  # the last line of fail-closed: a bug is still a veto
            log.exception("guard check failed unexpectedly")
            decision = self._failed(Status.ERROR, f"internal error: {exc!r}", trace.rules,
                                    trace.policy)
        except BaseException as exc:  # Ctrl-C or exit in the caller: audit, then let it go
            self._interrupted(exc, proposal, trace, t0)
            raise
        decision.latency_ms = (time.monotonic() - t0) * 1000.0
        return self._finish(decision, proposal, trace)

    def check_batch(self, items: Iterable[BatchItem], *, now: float | None = None
                    ) -> list[Decision]:
        """`judge_batch`'s decisions alone."""
        return [j.decision for j in self.judge_batch(items, now=now)]

    def judge_batch(self, items: Iterable[BatchItem], *, now: float | None = None
                    ) -> list[Judgement]:
        """Judge several proposals together (a server's waiting clients): each gets exactly
        the decision `judge` would give it alone (same validation, rules, frame handling,
        resize, prompt, parser, policy and audit record, its own deadline from its own
        `entered`), and those that reach the model are answered in one call of the
        backend's batch path (``backend.judge_batch``: one forward per step).

        A backend without a batch path, or ``model.rationale: async`` (a batch has no
        background rationale), judges the items one by one, concurrently (`judge` each).
        An answer that arrives after an item's own deadline is that item's timeout veto;
        the others of the batch keep theirs. Never raises for what it is given.

        Args:
            items: What to judge, in order: a list (any iterable) of `BatchItem`.
            now: The guard's clock for the frame-age checks (default: read per item once
                its frames are in hand).

        Returns:
            One `Judgement` per item, in the items' order; one audited invalid_input veto
            when `items` is no iterable of items (a number, text, a mapping, a lone
            `BatchItem`) or cannot be read to its end.
        """
        t0 = time.monotonic()
        # One policy for the batch path; rows judged one by one (`_judge_each`) read theirs
        # when each starts, as `judge` does.
        policy = self._policy
        try:
            rows = [_BatchRow(item, policy) for item in _batch_items(items)]
        except InvalidInputError as exc:
            decision = self._failed(Status.INVALID_INPUT, str(exc), RuleOutcome(), policy)
            decision.latency_ms = (time.monotonic() - t0) * 1000.0
            return [self._finish(decision, {"batch": items}, _Trace(policy=policy))]
        if (getattr(self.backend, "judge_batch", None) is None
                or self.config.model.rationale == "async" or len(rows) < 2):
            return self._judge_each(rows, now)
        jobs: list[_Job] = []
        for row in rows:
            try:
                if row.refusal is not None:
                    raise InvalidInputError(row.refusal)
                row.limit_ms = self._deadline_ms(row.item.deadline_ms, policy)
                row.deadline = row.t0 + row.limit_ms / 1000.0
                try:
                    action, rules = self._head(row.item.proposal, row.trace, row.deadline)
                except RulesUnfinished:
                    row.decision = self._rules_unfinished(row.limit_ms, row.trace)
                    continue
                if rules.skips_model:
                    row.decision = self._by_rules(rules, policy)
                    continue
                frames = row.item.frames
                if not callable(frames):
                    row.trace.frames = _as_frames(frames, self.config.image.max_frames)
                row.job = _Job(self, frames, action, now, row.deadline, rules, row.limit_ms,
                               policy)
                jobs.append(row.job)
            except InvalidInputError as exc:
                row.decision = self._failed(Status.INVALID_INPUT, str(exc), row.trace.rules,
                                            policy)
            except Exception as exc:
                log.exception("guard check failed unexpectedly")
                row.decision = self._failed(
                    Status.ERROR, f"internal error: {exc!r}", row.trace.rules, policy
                )
        try:
            if jobs:
                self._wait_batch(rows, jobs)
        except BaseException as exc:  # Ctrl-C in the caller: audit every row, then let it go
            for row in rows:
                self._interrupted(exc, row.item.proposal, row.trace, row.t0)
            raise
        out = []
        for row in rows:
            assert row.decision is not None
            decision = self._late(row.decision, row.deadline, row.limit_ms, row.trace)
            decision.latency_ms = (time.monotonic() - row.t0) * 1000.0
            out.append(self._finish(decision, row.item.proposal, row.trace))
        return out

    def _judge_each(self, rows: list[_BatchRow], now: float | None) -> list[Judgement]:
        """`judge` for each row, concurrently (the guard's own pool bounds the judging)."""
        def one(row: _BatchRow) -> Judgement:
            if row.refusal is not None:
                decision = self._failed(Status.INVALID_INPUT, row.refusal, RuleOutcome(),
                                        row.trace.policy)
                return self._finish(decision, row.item.proposal, row.trace)
            return self.judge(row.item.frames, row.item.proposal, now=now, entered=row.t0,
                              deadline_ms=row.item.deadline_ms)

        if len(rows) < 2:
            return [one(row) for row in rows]
        with cf.ThreadPoolExecutor(max_workers=len(rows),
                                   thread_name_prefix="guard-batch") as pool:
            return list(pool.map(one, rows))

    def _wait_batch(self, rows: list[_BatchRow], jobs: list[_Job]) -> None:
        """Run `jobs` as one batch on a worker; wait for each row only until its deadline."""
        future = self._executor.submit(_BatchJob(self, jobs).run)
        waiting = sorted((r for r in rows if r.job is not None), key=lambda r: r.deadline)
        results: dict[int, JobResult] | None = None
        for row in waiting:
            assert row.job is not None
            if results is None:
                try:
                    done = future.result(timeout=max(0.0, row.deadline - time.monotonic()))
                    results = {id(job): res for job, res in zip(jobs, done, strict=True)}
                except cf.TimeoutError:
                    row.decision = self._failed(
                        Status.TIMEOUT,
                        f"no answer within deadline_ms ({row.limit_ms:g}; still "
                        f"{row.job.stage})",
                        row.job.rules, row.job.policy,
                    )
                    continue
                except Exception as exc:  # a bug in the batch job: every row is a veto
                    log.error("guard batch failed unexpectedly: %r", exc)
                    results = {}
            res = results.get(id(row.job))
            if res is None:
                row.decision = self._failed(
                    Status.ERROR, "internal error: the batch gave no result", row.job.rules,
                    row.job.policy,
                )
                continue
            row.decision, done_trace = res
            row.trace.absorb(done_trace)
        if not future.done() and not future.cancel():
            with self._lock:
                self.stats["abandoned"] += 1

    def _deadline_ms(self, requested: float | None, policy: PolicySnapshot) -> float:
        """The deadline of one check: the policy's, or a shorter one the caller asked for."""
        limit = policy.config.deadline_ms
        if requested is None:
            return limit
        value = _real(requested)
        if value is None or not math.isfinite(value) or value <= 0:
            if value == math.inf and isinstance(requested, int):
                return limit  # an int beyond a float's range: finite, and not shorter
            raise InvalidInputError(
                f"deadline_ms = {_short(requested)}: must be a positive number"
            )
        return min(limit, value)

    def _late(self, decision: Decision, deadline: float, limit_ms: float,
              trace: _Trace) -> Decision:
        """An answer that arrived after the deadline is a timeout, whatever delayed it."""
        if decision.status is Status.OK and time.monotonic() > deadline:
            if trace.pending is not None:  # its verdict was not in time: nothing to complete
                trace.pending.future.cancel()
                trace.pending = None
            return self._failed(
                Status.TIMEOUT,
                f"answer arrived {(time.monotonic() - deadline) * 1000:.0f} ms after "
                f"deadline_ms ({limit_ms:g})",
                trace.rules, trace.policy,
            )
        return decision

    def _interrupted(self, exc: BaseException, proposal: ProposalArg, trace: _Trace,
                     t0: float) -> None:
        """Audit the veto of a check interrupted in the caller's thread (Ctrl-C, exit)."""
        trace.pending = None
        decision = self._failed(Status.ERROR, f"interrupted: {exc!r}", trace.rules,
                                trace.policy)
        decision.latency_ms = (time.monotonic() - t0) * 1000.0
        self._finish(decision, proposal, trace)

    def reject(
        self,
        proposal: ProposalArg,
        status: Status,
        reason: str,
        *,
        frame_stamp: float | None = None,
        policy: PolicySnapshot | None = None,
    ) -> Decision:
        """A fail-closed decision for a check a front end could not even start (e.g. an image
        that did not decode), audited like any other. A status given as its text is read as
        that status; one that is no status at all is an error veto that names it. `policy`:
        as `judge`'s (the record names the policy the front end's check began under).

        Raises:
            ValueError: `status` is ok (a refusal that is no failure is a front end's bug).
        """
        # The reason and stamp come from what the front end was given: made loggable, and a
        # stamp that is no finite number is none (it once raised out of the audit step).
        reason = safe_text(reason) if isinstance(reason, str) else short_repr(reason)
        status, reason = _failure_status(status, reason, "reject()")
        trace = _Trace(policy=_snapshot(policy, self._policy))
        decision = self._failed(status, reason, RuleOutcome(), trace.policy)
        stamp = _real(frame_stamp)
        decision.frame_stamp = stamp if stamp is not None and math.isfinite(stamp) else None
        try:
            trace.proposal = _as_proposal(proposal)
        except InvalidInputError:
            pass  # audited as what arrived
        return self._finish(decision, proposal, trace).decision

    def on_rationale(self, callback: RationaleCallback) -> None:
        """Call `callback` with the completed decision whenever an async rationale finishes.

        The decision keeps its id, verdict, risk and status; its hazards and rationale are
        filled in from the whole answer. Callbacks run on the backend's background thread and
        must not block; an exception in one is logged and ignored.
        """
        self._rationale_callbacks.append(callback)

    def wait_rationales(self, timeout: float | None = None) -> bool:
        """Wait until every async rationale started so far is audited and its `on_rationale`
        callbacks have run. True when none is pending, False when `timeout` (s) passed first."""
        with self._rationales_idle:
            return self._rationales_idle.wait_for(
                lambda: self._rationales_pending == 0, timeout
            )

    async def acheck(
        self,
        frames: FramesArg | FrameSource,
        proposal: ProposalArg,
        *,
        now: float | None = None,
        entered: float | None = None,
        deadline_ms: float | None = None,
        policy: PolicySnapshot | None = None,
    ) -> Decision:
        """`check` for asyncio code: the event loop is never blocked by the model."""
        entered = time.monotonic() if entered is None else entered
        return await asyncio.to_thread(self.check, frames, proposal, now=now, entered=entered,
                                       deadline_ms=deadline_ms, policy=policy)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._rules_executor.shutdown(wait=False, cancel_futures=True)
        try:
            self.backend.close()
        finally:
            self.audit.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the check -----------------------------------------------------------------------

    def _head(self, proposal: ProposalArg, trace: _Trace, deadline: float
              ) -> tuple[str, RuleOutcome]:
        """Validate the proposal, render its action text, evaluate the rules (no frame, no
        model; on a worker of their own, waited for until `deadline`, so a pattern that
        backtracks badly on this text cannot hold the caller).

        Raises:
            InvalidInputError: the proposal or its action text is refused.
            RulesUnfinished: the rules did not all answer by `deadline` (`trace.rules` then
                holds the worst they could have decided).
        """
        policy = trace.policy.config
        trace.proposal = _as_proposal(proposal)
        _judgeable(trace.proposal)
        action = trace.proposal.as_text(self.action_format)
        if not action.strip():
            raise InvalidInputError("the action text is empty")
        if len(action) > policy.max_action_chars:
            # Audited cut: a refused 30 MB description must not become a 30 MB record.
            trace.proposal = _cut(trace.proposal, policy.max_action_chars)
            raise InvalidInputError(
                f"action text is {len(action)} characters, over max_action_chars "
                f"({policy.max_action_chars})"
            )
        if policy.refuse_answer_format and (forged := _forged_answer(trace.proposal, action)):
            raise InvalidInputError(
                f"the action text imitates the judge's answer ({forged!r}); refused before any "
                f"model reads it (policy.refuse_answer_format)"
            )
        try:
            trace.rules = rules = self._evaluate_rules(
                trace.policy.rules, trace.proposal, action, deadline
            )
        except RulesUnfinished as exc:
            trace.rules = exc.outcome
            raise
        return action, rules

    def _evaluate_rules(self, compiled: list[CompiledRule], proposal: ActionProposal,
                        action: str, deadline: float) -> RuleOutcome:
        if not compiled:  # nothing that could take long: no thread hop
            return evaluate_rules(compiled, proposal, action)
        progress = RulesProgress(compiled)
        # The patterns stop themselves at the deadline too, but in CPU time (`regex`): the
        # caller waits on the wall clock.
        future = self._rules_executor.submit(
            evaluate_rules, compiled, proposal, action, deadline=deadline, progress=progress
        )
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except cf.TimeoutError:
            future.cancel()
            raise progress.unfinished() from None

    def _rules_unfinished(self, limit_ms: float, trace: _Trace) -> Decision:
        """The timeout of a check whose rules did not all answer in time: vetoed or annotated
        by every rule that could still have matched, even under `on_failure: allow`."""
        return self._failed(
            Status.TIMEOUT,
            f"no answer within deadline_ms ({limit_ms:g}; still evaluating policy rules)",
            trace.rules, trace.policy,
        )

    def _check(
        self,
        frames: FramesArg | FrameSource,
        proposal: ProposalArg,
        now: float | None,
        deadline: float,
        limit_ms: float,
        trace: _Trace,
    ) -> Decision:
        try:
            action, rules = self._head(proposal, trace, deadline)
        except RulesUnfinished:
            return self._rules_unfinished(limit_ms, trace)
        policy = trace.policy
        if rules.skips_model:
            return self._by_rules(rules, policy)
        if not callable(frames):
            # known even if the judge then times out
            trace.frames = _as_frames(frames, self.config.image.max_frames)
        job = _Job(self, frames, action, now, deadline, rules, limit_ms, policy)
        future = self._executor.submit(job.run)
        try:
            decision, done = future.result(timeout=max(0.0, deadline - time.monotonic()))
            trace.absorb(done)
        except cf.TimeoutError:
            if not future.cancel():
                with self._lock:
                    self.stats["abandoned"] += 1
            stage = job.stage
            return self._failed(
                Status.TIMEOUT,
                f"no answer within deadline_ms ({limit_ms:g}; still {stage})",
                rules, policy,
            )
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is exc:
                # Raised in the job, not in the caller (who was not interrupted): bad input
                # found while preparing, a bug of ours, or a backend's SystemExit or
                # KeyboardInterrupt (the job turns its ordinary exceptions into decisions).
                if isinstance(exc, InvalidInputError):
                    return self._failed(Status.INVALID_INPUT, str(exc), rules, policy)
                if isinstance(exc, Exception):
                    log.error("guard check failed unexpectedly: %r", exc)
                    return self._failed(Status.ERROR, f"internal error: {exc!r}", rules, policy)
                return self._failed(Status.ERROR, f"backend failed: {exc!r}", rules, policy)
            raise
        return decision

    def _judged(
        self, request: JudgeRequest, output: JudgeOutput, rules: RuleOutcome,
        record: dict[str, Any], applied: PolicySnapshot,
    ) -> tuple[Decision, _PendingRationale | None]:
        """The decision from a backend's answer (on the worker, inside the deadline)."""
        policy = applied.config
        problem = _output_problem(output, self._max_answer_chars)
        if problem is not None:
            if isinstance(output, JudgeOutput) and output.rationale is not None:
                output.rationale.cancel()
            return self._failed(Status.ERROR, f"backend answer rejected: {problem}", rules,
                                applied), None
        record["answer"] = output.text[:_MAX_AUDIT_ANSWER_CHARS]
        record["timings_ms"] = output.timings_ms
        mode = self._template.answer_mode
        try:
            answer = parse_answer(output.text, mode)
        except ParseError as exc:
            return self._failed(Status.ERROR, f"unparseable answer: {exc}", rules,
                                applied), None
        # A projection-first answer's first token is no verdict: its probabilities say nothing.
        probs = output.verdict_probs if mode == DEFAULT_ANSWER_MODE else None
        verdict, risk = decide(answer, probs, rules, policy)
        rationale = " ".join(s for s in (answer.consequence, answer.rationale) if s)
        pending = None
        if output.rationale is not None:
            pending = _PendingRationale(output.rationale, output.verdict_probs, rules, applied)
        decision = Decision(
            verdict=verdict,
            status=Status.OK,
            risk=risk,
            hazards=answer.hazards,
            rationale=rationale,
            model=self.backend.model_id,
            policy=applied.id,
            rules=[r.name for r in rules.matched],
            mode=policy.mode,
        )
        return decision, pending

    # -- decisions that did not come from the model ---------------------------------------

    def _by_rules(self, rules: RuleOutcome, policy: PolicySnapshot) -> Decision:
        assert rules.verdict is not None
        reasons = "; ".join(f"{r.name}: {r.reason}" if r.reason else r.name for r in rules.matched)
        risk = {Verdict.ALLOW: 0.0, Verdict.ANNOTATE: 0.5, Verdict.VETO: 1.0}[rules.verdict]
        return Decision(
            verdict=rules.verdict,
            status=Status.OK,
            risk=risk,
            rationale=f"decided by rule ({reasons})",
            model="rules",
            policy=policy.id,
            rules=[r.name for r in rules.matched],
            mode=policy.config.mode,
        )

    def _failed(self, status: Status, error: str, rules: RuleOutcome, policy: PolicySnapshot
                ) -> Decision:
        verdict = failure_verdict(status, policy.config)
        if rules.verdict is not None:
            verdict = Verdict.most_restrictive(verdict, rules.verdict)
        return Decision(
            verdict=verdict,
            status=status,
            risk=1.0 if verdict is Verdict.VETO else 0.0,
            rationale=f"check did not run ({status.value}): {error}",
            model=self.backend.model_id if hasattr(self, "backend") else "none",
            policy=policy.id,
            rules=[r.name for r in rules.matched],
            mode=policy.config.mode,
            error=error,
        )

    def _finish(self, decision: Decision, proposal: Any, trace: _Trace) -> Judgement:
        """Count and audit a decision; an unlogged decision is never an allow."""
        pending = trace.pending
        if decision.frame_stamp is None and trace.frames:
            decision.frame_stamp = trace.frames[-1].stamp
            decision.frame_stamp_ns = trace.frames[-1].stamp_ns
        if decision.frame_stamp is not None and not math.isfinite(decision.frame_stamp):
            decision.frame_stamp = None
        if trace.proposal is not None:
            decision.proposal_id = trace.proposal.id
        else:
            decision.proposal_id = _raw_id(proposal)
        with self._lock:
            self.stats["checks"] += 1
            self.stats["vetoes"] += decision.verdict is Verdict.VETO
            self.stats["timeouts"] += decision.status is Status.TIMEOUT
            self.stats["errors"] += decision.status is Status.ERROR
        try:
            payload = self._audit_payload(decision, proposal, trace)
            self.audit.append("decision", payload)
        except Exception as exc:  # an unlogged decision must not be an allow
            log.error("audit write failed: %s", exc)
            pending = None
            if trace.policy.config.on_failure != "allow":
                decision.verdict, decision.status = Verdict.VETO, Status.ERROR
                decision.risk = 1.0
                decision.error = f"audit write failed: {exc}"
        log.debug("decision %s", decision.model_dump_json())
        judgement = Judgement(
            decision=decision,
            proposal=trace.proposal,
            frames=trace.frames,
            prompt=trace.prompt,
            answer=trace.record.get("answer"),
            timings_ms=dict(trace.record.get("timings_ms") or {}),
            judged_sizes=[(int(w), int(h)) for w, h in trace.record.get("judged_sizes", [])],
        )
        if pending is not None:
            # Attached after the decision's own record, so the rationale record follows it.
            snapshot = decision.model_copy(deep=True)
            judgement.rationale = pending.done
            with self._rationales_idle:
                self._rationales_pending += 1
            pending.future.add_done_callback(
                lambda f: self._rationale_done(snapshot, pending, f)
            )
        elif trace.pending is not None:
            trace.pending.future.cancel()
        return judgement

    def _audit_payload(self, decision: Decision, proposal: Any, trace: _Trace) -> dict[str, Any]:
        if trace.proposal is not None:
            judged: Any = trace.proposal.model_dump(mode="json")
        else:  # a proposal that did not validate: what arrived, made loggable
            raw = proposal
            if isinstance(proposal, BaseModel):
                raw = {k: getattr(proposal, k, None) for k in type(proposal).model_fields}
            judged = {"invalid": jsonable(raw, max_depth=8, cut=True,
                                          max_values=MAX_ARGUMENT_VALUES)}
        return {
            "decision": decision.model_dump(mode="json"),
            "proposal": judged,
            "frames": [
                {"stamp": f.stamp if f.stamp is None or math.isfinite(f.stamp) else str(f.stamp),
                 "source": safe_text(f.source), "size": list(f.size)}
                for f in trace.frames
            ],
            **trace.record,
        }

    def _rationale_done(
        self, decision: Decision, pending: _PendingRationale, future: cf.Future[str]
    ) -> None:
        try:
            self._audit_rationale(decision, pending, future)
        finally:
            with self._rationales_idle:
                self._rationales_pending -= 1
                self._rationales_idle.notify_all()

    def _audit_rationale(
        self, decision: Decision, pending: _PendingRationale, future: cf.Future[str]
    ) -> None:
        """Audit a finished (or failed) async rationale and hand the completed decision on."""
        payload: dict[str, Any] = {
            "decision_id": decision.id,
            "proposal_id": decision.proposal_id,
        }
        completed = decision.model_copy(deep=True)
        try:
            text: str | None = future.result()
        except BaseException as exc:  # cancelled at close, or the backend failed
            text = None
            payload["error"] = f"rationale not generated: {exc!r}"
        if text is not None:
            payload["answer"] = str(text)[:_MAX_AUDIT_ANSWER_CHARS]
            try:
                answer = parse_answer(text, self._template.answer_mode)
                # What deciding on the whole answer would have given: an audit can find the
                # checks where the verdict alone decided differently.
                full_verdict, full_risk = decide(
                    answer, pending.verdict_probs, pending.rules, pending.policy.config
                )
            except (ParseError, ValueError) as exc:
                payload["error"] = f"unparseable answer: {exc}"
            else:
                completed.hazards = answer.hazards
                completed.rationale = " ".join(
                    s for s in (answer.consequence, answer.rationale) if s
                )
                payload.update(
                    rationale=completed.rationale,
                    hazards=[h.model_dump(mode="json") for h in answer.hazards],
                    answer_verdict=full_verdict.value,
                    answer_risk=full_risk,
                    agrees=full_verdict is decision.verdict,
                )
        try:
            self.audit.append("rationale", payload)
        except Exception as exc:  # the decision itself is already audited
            log.error("audit write of a rationale failed: %s", exc)
        pending.done.set_result(RationaleDone(completed, payload))
        for callback in list(self._rationale_callbacks):
            try:
                callback(completed)
            except Exception:
                log.exception("rationale callback failed")


@dataclass
class _Trace:
    """What one check learned on its way, for its audit record and its `Judgement`."""

    policy: PolicySnapshot  # the policy the check applies, read once when it starts
    proposal: ActionProposal | None = None
    rules: RuleOutcome = field(default_factory=RuleOutcome)
    frames: list[Frame] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    prompt: dict[str, str] | None = None
    pending: _PendingRationale | None = None

    def absorb(self, job: _Trace) -> None:
        """Take what a job that finished in time learned."""
        self.frames, self.record = job.frames, job.record
        self.prompt, self.pending = job.prompt, job.pending


@dataclass
class RationaleDone:
    """An async rationale, finished: the completed decision (same id, verdict and risk; hazards
    and rationale from the whole answer) and its audit record's fields."""

    decision: Decision
    record: dict[str, Any]


@dataclass
class Judgement:
    """What one check did, for callers that need more than the decision (replay, bench): the
    decision, the prompt text and answer it came from, the backend's timings, the frames
    judged, and with ``model.rationale: async`` a future of the finished rationale.

    Everything here is also in the audit record; nobody needs to read the log back.
    """

    decision: Decision
    proposal: ActionProposal | None = None
    frames: list[Frame] = field(default_factory=list)
    prompt: dict[str, str] | None = None
    answer: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    rationale: cf.Future[RationaleDone] | None = None
    #: (width, height) of each frame as the judge saw it, after the one resize.
    judged_sizes: list[tuple[int, int]] = field(default_factory=list)


JobResult = tuple[Decision, _Trace]


@dataclass(frozen=True)
class BatchItem:
    """One check of `Guard.judge_batch`: what `Guard.judge` takes for one proposal.

    Attributes:
        frames: A frame, frames (oldest first), None, or a frame source.
        proposal: An `ActionProposal` or its fields as a mapping.
        entered: The `time.monotonic()` instant this check began (e.g. a request's arrival
            at a server: the time it waited for a batch counts against its deadline);
            default: when `judge_batch` is called.
        deadline_ms: A shorter deadline for this check alone (see `Guard.judge`).
    """

    frames: FramesArg | FrameSource
    proposal: ProposalArg
    entered: float | None = None
    deadline_ms: float | None = None


class _BatchRow:
    """One item of a batch on its way through `Guard.judge_batch`."""

    def __init__(self, item: BatchItem, policy: PolicySnapshot) -> None:
        self.t0 = time.monotonic()
        #: Why the item cannot be judged as given (not a BatchItem, an unusable `entered`):
        #: the row's invalid_input veto.
        self.refusal: str | None = None
        if not isinstance(item, BatchItem):
            self.refusal = f"a batch item must be a BatchItem, got {type(item).__name__}"
            item = BatchItem(None, {"batch_item": item})
        self.item = item
        try:
            self.t0 = _entered(item.entered, self.t0)
        except InvalidInputError as exc:
            self.refusal = str(exc)
        self.limit_ms = math.inf
        self.deadline = math.inf
        self.trace = _Trace(policy=policy)
        self.job: _Job | None = None
        self.decision: Decision | None = None


class _Job:
    """The part of a check that runs on a worker thread, inside the deadline: acquire the
    frames, check their freshness, resize, render (`prepare`), judge, parse (`conclude`).
    The caller waits for it only until the deadline; `stage` says where an abandoned job
    was."""

    def __init__(
        self, guard: Guard, frames: FramesArg | FrameSource, action: str,
        now: float | None, deadline: float, rules: RuleOutcome, limit_ms: float,
        policy: PolicySnapshot,
    ) -> None:
        self.guard, self.frames, self.action = guard, frames, action
        self.now, self.deadline, self.rules = now, deadline, rules
        self.limit_ms, self.policy = limit_ms, policy
        self.stage = "queued"
        # The job's own trace: the caller takes it only from a job that finished in time.
        self.trace = _Trace(policy=policy)
        self._frames: list[Frame] = []

    def run(self) -> JobResult:
        prepared = self.prepare()
        if not isinstance(prepared, JudgeRequest):
            return prepared
        self.stage = "judging"
        try:
            output = self.guard.backend.judge(prepared)
        except Exception as exc:
            return self.judge_failed(exc)
        return self.conclude(prepared, output)

    def failed(self, status: Status, error: str) -> JobResult:
        self.trace.frames = self._frames
        return self.guard._failed(status, error, self.rules, self.policy), self.trace

    def judge_failed(self, exc: BaseException) -> JobResult:
        """The decision of a backend call that raised."""
        if isinstance(exc, BackendTimeout):
            return self.failed(
                Status.TIMEOUT, f"no answer within deadline_ms ({self.limit_ms:g})"
            )
        if isinstance(exc, Exception):
            msg = str(exc) if isinstance(exc, GuardError) else f"{type(exc).__name__}: {exc}"
            return self.failed(Status.ERROR, f"backend failed: {msg}")
        return self.failed(Status.ERROR, f"backend failed: {exc!r}")

    def prepare(self) -> JobResult | JudgeRequest:
        """The request to judge, or the decision of a check that ends before the model."""
        guard, trace = self.guard, self.trace
        policy, image_cfg = self.policy.config, guard.config.image
        record = trace.record

        self.stage = "acquiring frames"
        try:
            frames = _as_frames(self.frames() if callable(self.frames) else self.frames,
                                image_cfg.max_frames)
        except InvalidInputError as exc:
            return self.failed(Status.INVALID_INPUT, str(exc))
        except Exception as exc:
            return self.failed(
                Status.ERROR, f"frame source failed: {type(exc).__name__}: {exc}"
            )
        self._frames = frames
        for f in frames:
            try:
                check_array(
                    f.image, source=f.source or "frame",
                    max_input_pixels=image_cfg.max_input_pixels,
                )
            except InvalidInputError as exc:
                return self.failed(Status.INVALID_INPUT, str(exc))
        now = _reading(guard._clock() if self.now is None else self.now)
        fresh = frame_freshness(
            frames[-1].stamp if frames else None,
            now,
            max_age_ms=policy.max_frame_age_ms,
            max_skew_ms=policy.max_clock_skew_ms,
            has_frame=bool(frames),
        )
        if not fresh.fresh and (frames or policy.require_frame):
            assert fresh.status is not None
            return self.failed(fresh.status, fresh.reason)

        self.stage = "resizing frames"
        images = tuple(resize_for_judge(f.image, image_cfg, guard.backend,
                                        source=f.source or "frame") for f in frames)
        # The size the judge saw (after the one resize), beside each frame's size on arrival.
        record["judged_sizes"] = [list(im.size) for im in images]
        request = JudgeRequest(
            prompt=guard._template.render(self.action, images),
            max_new_tokens=guard.config.model.max_new_tokens,
            deadline=self.deadline,
            # the verdict comes after the projection: only the whole answer holds it
            rationale=(guard.config.model.rationale
                       if guard._template.answer_mode == DEFAULT_ANSWER_MODE else "sync"),
        )
        trace.prompt = {"system": request.prompt.system, "user": request.prompt.user}
        if guard.config.audit.include_prompt:
            record["prompt"] = trace.prompt
        return request

    def conclude(self, request: JudgeRequest, output: JudgeOutput) -> JobResult:
        """The decision from the backend's answer to `request`."""
        self.stage = "parsing the answer"
        decision, self.trace.pending = self.guard._judged(
            request, output, self.rules, self.trace.record, self.policy
        )
        self.trace.frames = self._frames
        return decision, self.trace


class _BatchJob:
    """Several checks' jobs as one batch on one worker: each prepared alone, all judged in
    one call of the backend's batch path, each concluded alone."""

    def __init__(self, guard: Guard, jobs: list[_Job]) -> None:
        self.guard, self.jobs = guard, jobs

    def run(self) -> list[JobResult]:
        results: list[JobResult | None] = [None] * len(self.jobs)
        judged: list[tuple[int, JudgeRequest]] = []
        for i, job in enumerate(self.jobs):
            if time.monotonic() >= job.deadline:  # its caller has already given up on it
                results[i] = job.failed(
                    Status.TIMEOUT, f"no answer within deadline_ms ({job.limit_ms:g}; still "
                    "queued)")
                continue
            try:
                prepared = job.prepare()
            except InvalidInputError as exc:  # e.g. an aspect ratio the judge refuses
                results[i] = job.failed(Status.INVALID_INPUT, str(exc))
                continue
            except BaseException as exc:  # SystemExit from a frame source too: this row's veto
                log.error("guard check failed unexpectedly: %r", exc)
                results[i] = job.failed(Status.ERROR, f"internal error: {exc!r}")
                continue
            if isinstance(prepared, JudgeRequest):
                judged.append((i, prepared))
            else:
                results[i] = prepared
        if judged:
            for i, _ in judged:
                self.jobs[i].stage = "judging"
            # The batch path stops at the earliest deadline it is given; each row's own
            # deadline is enforced by the guard, so one hurried row does not time out the rest.
            latest = max(r.deadline for _, r in judged if r.deadline is not None)
            batch = [dataclasses.replace(r, deadline=latest) for _, r in judged]
            try:
                outputs = self.guard.backend.judge_batch(batch)  # type: ignore[attr-defined]
                if not isinstance(outputs, Sequence) or len(outputs) != len(batch):
                    raise BackendError(
                        f"the batch path answered {_short(outputs)} for {len(batch)} requests"
                    )
            except BaseException as exc:
                for i, _ in judged:
                    results[i] = self.jobs[i].judge_failed(exc)
            else:
                for (i, request), output in zip(judged, outputs, strict=True):
                    results[i] = self.jobs[i].conclude(request, output)
        return [r for r in results if r is not None]


def _output_problem(output: Any, max_chars: int) -> str | None:
    """Why a backend's output cannot be judged on, or None. Non-finite or out-of-range
    verdict probabilities are an error, never something to take an argmax over."""
    if not isinstance(output, JudgeOutput):
        return f"the backend returned {type(output).__name__}, not a JudgeOutput"
    if not isinstance(output.text, str):
        return f"the answer is {type(output.text).__name__}, not text"
    if len(output.text) > max_chars:
        return f"the answer is {len(output.text)} characters, over {max_chars}"
    probs = output.verdict_probs
    if probs is None:
        return None
    if not isinstance(probs, Mapping) or not probs:
        return f"verdict probabilities {_short(probs)} are not a mapping of words to numbers"
    for word, p in probs.items():
        if (
            not isinstance(p, (int, float)) or isinstance(p, bool)
            or not math.isfinite(p) or not 0.0 <= p <= 1.0 + 1e-6
        ):
            return f"verdict probability of {_short(word)} is {_short(p)}, not in [0, 1]"
    if sum(probs.values()) <= 0.0:
        return "verdict probabilities are all zero"
    return None


def _short(x: Any) -> str:
    return short_repr(x)[:60]


def _as_proposal(proposal: ProposalArg) -> ActionProposal:
    """Validate what a caller passed as a proposal (also an ActionProposal built without
    validation or changed since): a bad one is invalid input, with pydantic's reason."""
    try:
        if isinstance(proposal, ActionProposal):
            fields = {k: getattr(proposal, k) for k in ActionProposal.model_fields}
            return ActionProposal.model_validate(fields)
        if isinstance(proposal, Mapping):
            return ActionProposal.model_validate(dict(proposal))
    except ValidationError as exc:
        raise _invalid("proposal", exc) from None
    except Exception as exc:  # a mapping whose own methods raise: it cannot be read
        raise InvalidInputError(
            f"proposal cannot be read: {type(exc).__name__}: {_short(exc)}"
        ) from None
    raise InvalidInputError(
        f"proposal must be an ActionProposal or a mapping, got {type(proposal).__name__}"
    )


def _failure_status(status: Any, reason: str, caller: str) -> tuple[Status, str]:
    """The status of a refusal and its reason: a status's text is that status (read from a
    wire message or a config), anything else no status is an error that names it.

    Raises:
        ValueError: `status` is ok.
    """
    if not isinstance(status, Status):
        try:
            status = Status(status)
        except (ValueError, TypeError):  # unhashable too
            return Status.ERROR, f"{reason} (status {_short(status)} is no Status)"
    if status is Status.OK:
        raise ValueError(f"{caller} needs a failure status")
    return status, reason


def _forged_answer(proposal: ActionProposal, action: str) -> str | None:
    """The first piece of the action text, or of an argument's text as it reads decoded (JSON
    rendering escapes line breaks and non-ASCII letters, which a judge may read through), in
    the judge's answer format; None when there is none."""
    pending: list[Any] = [proposal.arguments]
    texts = [action]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            texts += [k for k in value if isinstance(k, str)]
            pending += value.values()
        elif isinstance(value, (list, tuple)):
            pending += value
        elif isinstance(value, str):
            texts.append(value)
    return next((f for t in texts if (f := imitates_answer(t)) is not None), None)


def _judgeable(proposal: ActionProposal) -> None:
    """Refuse what the type lets through (so front ends can build stand-ins) but no check
    may judge.

    Raises:
        InvalidInputError: a blank id (decisions are matched to proposals by id: one blank id
            would name them all alike), or a tool name holding a control character (no tool
            is named so, and "stove_on\x00" slips past the rule ``^stove_on$``).
    """
    if not proposal.id.strip():
        raise InvalidInputError("proposal id is empty (leave it out and one is made)")
    for c in proposal.name:
        if unicodedata.category(c) == "Cc":
            raise InvalidInputError(f"proposal name holds a control character ({c!r})")


def unjudged(
    status: Status,
    error: str,
    *,
    audit: AuditConfig | None = None,
    proposal: ProposalArg | None = None,
) -> Decision:
    """The audited fail-closed decision of a front end that has no Guard to ask (its config did
    not validate, its model did not load, a node not yet configured): a veto, whatever
    `on_failure` says, since no policy was read. It goes to the audit log `audit` names (the
    default log when None); a log that cannot be written is named in the decision's error.
    """
    status, error = _failure_status(status, error, "unjudged()")
    decision = Decision(
        verdict=Verdict.VETO, status=status, risk=1.0, model="none", policy="none",
        rationale=f"check did not run ({status.value}): {error}", error=error,
    )
    payload: dict[str, Any] = {"decision": decision.model_dump(mode="json")}
    if proposal is not None:
        try:
            valid = _as_proposal(proposal)
            decision.proposal_id = valid.id
            payload["proposal"] = valid.model_dump(mode="json")
        except InvalidInputError:
            payload["proposal"] = {"invalid": jsonable(
                proposal, max_depth=8, cut=True, max_values=MAX_ARGUMENT_VALUES)}
        payload["decision"]["proposal_id"] = decision.proposal_id
    try:
        with AuditLog.from_config(audit or AuditConfig()) as log_:
            log_.append("decision", payload)
    except Exception as exc:  # nothing more to fall back on: say so in the decision
        decision.error = f"{error}; audit write failed: {exc}"
    return decision


def _batch_items(items: Any) -> list[Any]:
    """The items of a batch as a list, read once.

    Raises:
        InvalidInputError: `items` is no iterable of items (text and bytes iterate as
            characters, a mapping as its keys), or reading it failed.
    """
    if isinstance(items, (str, bytes, bytearray, memoryview, Mapping, BatchItem)) or not (
            isinstance(items, Iterable)):
        raise InvalidInputError(
            f"batch items must be a list of BatchItem, got {type(items).__name__}")
    try:
        return list(items)
    except Exception as exc:
        raise InvalidInputError(
            f"batch items cannot be read: {type(exc).__name__}: {_short(exc)}") from None


def _as_frames(frames: FramesArg, keep: int) -> list[Frame]:
    """The newest `keep` frames, each validated again (a Frame built with `model_construct` or
    changed with `model_copy(update=...)` skipped its validation): what the type refuses is
    invalid input, so no check reads a stamp that is not a number or an image that is not an
    array."""
    if frames is None:
        return []
    if isinstance(frames, Frame):
        frames = [frames]
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise InvalidInputError(f"frames must be Frame objects, got {type(frames).__name__}")
    given = [f for f in frames if f is not None]
    for f in given:
        if not isinstance(f, Frame):
            raise InvalidInputError(f"frames must be Frame objects, got {type(f).__name__}")
    out = []
    for f in given[-keep:]:
        try:
            out.append(Frame.model_validate({k: getattr(f, k, None) for k in Frame.model_fields}))
        except ValidationError as exc:
            raise _invalid("frame", exc) from None
    return out


def _invalid(what: str, exc: ValidationError) -> InvalidInputError:
    """The first error of a failed validation of `what` (proposal, frame) as one line."""
    return InvalidInputError(validation_line(what, exc))


def _real(x: Any) -> float | None:
    """`x` as a float if it is a real number (an int beyond a float's range is infinite),
    else None; a bool is not a number here."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    try:
        return float(x)
    except OverflowError:
        if isinstance(x, int):
            return math.inf if x > 0 else -math.inf
        return None
    except (TypeError, ValueError):  # a Real whose __float__ misbehaves
        return None


def _reading(now: Any) -> Any:
    """The guard's clock reading as a float where it is a real number (numpy scalars, huge
    ints); anything else as it came, for the freshness rule to refuse by name."""
    value = _real(now)
    return now if value is None else value


def _snapshot(given: Any, current: PolicySnapshot) -> PolicySnapshot:
    """The policy a check applies: the front end's snapshot, else the guard's now."""
    return given if isinstance(given, PolicySnapshot) else current


def _given_snapshot(given: Any) -> None:
    """Raises InvalidInputError: `given` is neither None nor a `Guard.policy` snapshot (a
    `PolicyConfig` would carry no compiled rules, and no promise it was ever applied)."""
    if given is not None and not isinstance(given, PolicySnapshot):
        raise InvalidInputError(
            f"policy = {_short(given)}: must be a snapshot from Guard.policy, or None")


def _entered(entered: Any, now: float) -> float:
    """The instant a check began: `now` (a `time.monotonic()` reading) when not given.

    Raises:
        InvalidInputError: `entered` is not a finite number, or lies after `now`: a monotonic
            instant read before the check cannot, so it was read from another clock (the wall
            clock's `time.time()` is decades ahead), and taking it as now would give a
            caller that waited for its frames a whole deadline after the wait.
    """
    if entered is None:
        return now
    value = _real(entered)
    if value is None or not math.isfinite(value):
        raise InvalidInputError(f"entered = {_short(entered)}: must be a finite time.monotonic()")
    if value > now:
        raise InvalidInputError(
            f"entered = {_short(entered)} is {value - now:.3g} s after time.monotonic(): "
            "not a reading of that clock")
    return value


def _cut(proposal: ActionProposal, limit: int) -> ActionProposal:
    """`proposal` as the audit keeps it when its action text was refused for its length:
    text fields cut to `limit` characters and arguments whose JSON is longer replaced, each
    saying how long it was."""

    def text(value: str) -> str:
        return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"

    arguments: dict[str, Any] = proposal.arguments
    size = len(json.dumps(arguments, default=str))
    if size > limit:
        arguments = {"<cut>": f"arguments of {size} characters as JSON"}
    return proposal.model_copy(update={
        "id": text(proposal.id), "name": text(proposal.name),
        "description": text(proposal.description), "arguments": arguments,
    })


def _raw_id(proposal: Any) -> str:
    """The id of a proposal that did not validate, for the decision: text as given (cut),
    anything else described; never an exception, whatever the object does."""
    try:
        raw = proposal.get("id") if isinstance(proposal, Mapping) else getattr(
            proposal, "id", None)
    except Exception:
        return ""
    if raw is None:
        return ""
    return safe_text(str.__str__(raw))[:200] if isinstance(raw, str) else _short(raw)


__all__ = ["BackendError", "BatchItem", "Guard", "Judgement", "PolicySnapshot", "RationaleDone",
           "unjudged"]
