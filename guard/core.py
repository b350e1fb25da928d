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
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from guard.audit import AuditLog
from guard.backends import Backend, JudgeOutput, JudgeRequest, create_backend
from guard.config import GuardConfig, PolicyConfig
from guard.errors import BackendError, BackendTimeout, ConfigError, GuardError, InvalidInputError
from guard.freshness import frame_freshness
from guard.imaging import check_array, fit_max_pixels
from guard.policy import RuleOutcome, compile_rules, decide, evaluate_rules, failure_verdict
from guard.prompting import ParseError, load_template, parse_answer, resolve_template
from guard.types import ActionProposal, Decision, Frame, Status, Verdict

log = logging.getLogger("guard")

FramesArg = Frame | Sequence[Frame] | None
RationaleCallback = Callable[[Decision], None]

_MAX_AUDIT_ANSWER_CHARS = 4096


@dataclass
class _PendingRationale:
    """An answer still being generated after its decision was made (rationale: async)."""

    future: cf.Future[str]
    verdict_probs: dict[str, float] | None
    rules: RuleOutcome


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
        self._rules = compile_rules(self.config.policy.rules)
        #: The prompt template in use (configured, else the model's trained one).
        self.template_name = resolve_template(self.config.prompt.template, self.config.model.id)
        self._template = load_template(self.template_name)
        self._policy_id = self.config.policy.fingerprint()
        self._clock = clock
        self._executor = cf.ThreadPoolExecutor(
            max_workers=self.config.policy.max_inflight, thread_name_prefix="guard-judge"
        )
        self._lock = threading.Lock()
        self._rationale_callbacks: list[RationaleCallback] = []
        self._rationales_pending = 0
        self._rationales_idle = threading.Condition()
        self.stats = {"checks": 0, "vetoes": 0, "timeouts": 0, "errors": 0, "abandoned": 0}
        self.audit = audit if audit is not None else AuditLog(
            self.config.audit.path, fsync=self.config.audit.fsync
        )
        try:
            self.backend = backend if backend is not None else create_backend(self.config)
        except BaseException:
            self._executor.shutdown(wait=False)
            self.audit.close()
            raise

    # -- public API ----------------------------------------------------------------------

    @property
    def policy_id(self) -> str:
        return self._policy_id

    @property
    def mode(self) -> str:
        return self.config.policy.mode

    def set_mode(self, mode: str) -> None:
        """Switch enforce/shadow at runtime (the policy fingerprint follows)."""
        if mode not in ("enforce", "shadow"):
            raise ConfigError(f"policy.mode = {mode!r}: must be 'enforce' or 'shadow'")
        self.set_policy(mode=mode)

    def set_policy(self, **fields: Any) -> None:
        """Change policy fields at runtime (``deadline_ms``, ``max_frame_age_ms``, ``mode``,
        thresholds): checks that start afterwards use them, and the policy fingerprint in the
        audit records follows.

        Raises:
            ConfigError: An unknown field or a bad value (the policy is left as it was).
        """
        data = {**self.config.policy.model_dump(), **fields}
        try:
            policy = PolicyConfig.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(map(str, err["loc"]))
            raise ConfigError(f"policy.{field} = {fields.get(field, '?')!r}: "
                              f"{err['msg']}") from None
        self.config = self.config.model_copy(update={"policy": policy})
        self._policy_id = policy.fingerprint()

    def check(
        self, frames: FramesArg, proposal: ActionProposal, *, now: float | None = None
    ) -> Decision:
        """Judge one proposal against the latest frame(s). Never raises for a failed check:
        the failure is a fail-closed decision."""
        t0 = time.monotonic()
        deadline = t0 + self.config.policy.deadline_ms / 1000.0
        now = self._clock() if now is None else now
        record: dict[str, Any] = {}
        frame_list: list[Frame] = []
        try:
            frame_list = _as_frames(frames)
            decision = self._check(frame_list, proposal, now, deadline, record)
        except InvalidInputError as exc:
            decision = self._failed(Status.INVALID_INPUT, str(exc), RuleOutcome())
        except Exception as exc:  # the last line of fail-closed: a bug is still a veto
            log.exception("guard check failed unexpectedly")
            decision = self._failed(Status.ERROR, f"internal error: {exc!r}", RuleOutcome())
        decision.latency_ms = (time.monotonic() - t0) * 1000.0
        if decision.frame_stamp is None and frame_list:
            decision.frame_stamp = frame_list[-1].stamp
        return self._finish(decision, proposal, frame_list, record)

    def reject(
        self,
        proposal: ActionProposal,
        status: Status,
        reason: str,
        *,
        frame_stamp: float | None = None,
    ) -> Decision:
        """A fail-closed decision for a check a front end could not even start (e.g. an image
        that did not decode), audited like any other."""
        if status is Status.OK:
            raise ValueError("reject() needs a failure status")
        decision = self._failed(status, reason, RuleOutcome())
        decision.frame_stamp = frame_stamp
        return self._finish(decision, proposal, [], {})

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
        self, frames: FramesArg, proposal: ActionProposal, *, now: float | None = None
    ) -> Decision:
        """`check` for asyncio code: the event loop is never blocked by the model."""
        return await asyncio.to_thread(self.check, frames, proposal, now=now)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        try:
            self.backend.close()
        finally:
            self.audit.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the check -----------------------------------------------------------------------

    def _check(
        self,
        frames: list[Frame],
        proposal: ActionProposal,
        now: float,
        deadline: float,
        record: dict[str, Any],
    ) -> Decision:
        policy, image_cfg = self.config.policy, self.config.image
        if not isinstance(proposal, ActionProposal):
            return self._failed(
                Status.INVALID_INPUT,
                f"proposal must be an ActionProposal, got {type(proposal).__name__}",
                RuleOutcome(),
            )
        action = proposal.as_text()
        if len(action) > policy.max_action_chars:
            return self._failed(
                Status.INVALID_INPUT,
                f"action text is {len(action)} characters, over max_action_chars "
                f"({policy.max_action_chars})",
                RuleOutcome(),
            )
        rules = evaluate_rules(self._rules, proposal)
        if rules.skips_model:
            assert rules.verdict is not None
            return self._by_rules(rules)

        if frames:
            frames = frames[-image_cfg.max_frames :]
            for f in frames:
                try:
                    check_array(
                        f.image, source=f.source or "frame",
                        max_input_pixels=image_cfg.max_input_pixels,
                    )
                except InvalidInputError as exc:
                    return self._failed(Status.INVALID_INPUT, str(exc), rules)
        fresh = frame_freshness(
            frames[-1].stamp if frames else None,
            now,
            max_age_ms=policy.max_frame_age_ms,
            max_skew_ms=policy.max_clock_skew_ms,
            has_frame=bool(frames),
        )
        if not fresh.fresh and (frames or policy.require_frame):
            assert fresh.status is not None
            return self._failed(fresh.status, fresh.reason, rules)

        images = tuple(fit_max_pixels(f.image, image_cfg.max_pixels) for f in frames)
        request = JudgeRequest(
            prompt=self._template.render(action, images),
            max_new_tokens=self.config.model.max_new_tokens,
            deadline=deadline,
            rationale=self.config.model.rationale,
        )
        if self.config.audit.include_prompt:
            record["prompt"] = {"system": request.prompt.system, "user": request.prompt.user}
        try:
            output = self._judge(request, deadline)
        except (TimeoutError, BackendTimeout):
            return self._failed(
                Status.TIMEOUT,
                f"no answer within deadline_ms ({policy.deadline_ms:g})",
                rules,
            )
        except Exception as exc:
            msg = str(exc) if isinstance(exc, GuardError) else f"{type(exc).__name__}: {exc}"
            return self._failed(Status.ERROR, f"backend failed: {msg}", rules)

        record["answer"] = output.text[:_MAX_AUDIT_ANSWER_CHARS]
        record["timings_ms"] = output.timings_ms
        try:
            answer = parse_answer(output.text)
        except ParseError as exc:
            return self._failed(Status.ERROR, f"unparseable answer: {exc}", rules)
        verdict, risk = decide(answer, output.verdict_probs, rules, policy)
        rationale = " ".join(s for s in (answer.consequence, answer.rationale) if s)
        if output.rationale is not None:
            record["_rationale"] = _PendingRationale(output.rationale, output.verdict_probs, rules)
        return Decision(
            verdict=verdict,
            status=Status.OK,
            risk=risk,
            hazards=answer.hazards,
            rationale=rationale,
            model=self.backend.model_id,
            policy=self._policy_id,
            rules=[r.name for r in rules.matched],
            mode=policy.mode,
        )

    def _judge(self, request: JudgeRequest, deadline: float) -> JudgeOutput:
        """Run the backend on a worker thread; give up at the deadline. A backend that hangs
        keeps its worker, never the caller; queued calls past their deadline are cancelled."""
        future = self._executor.submit(self.backend.judge, request)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except cf.TimeoutError:
            if not future.cancel():
                with self._lock:
                    self.stats["abandoned"] += 1
            raise TimeoutError from None

    # -- decisions that did not come from the model ---------------------------------------

    def _by_rules(self, rules: RuleOutcome) -> Decision:
        assert rules.verdict is not None
        reasons = "; ".join(f"{r.name}: {r.reason}" if r.reason else r.name for r in rules.matched)
        risk = {Verdict.ALLOW: 0.0, Verdict.ANNOTATE: 0.5, Verdict.VETO: 1.0}[rules.verdict]
        return Decision(
            verdict=rules.verdict,
            status=Status.OK,
            risk=risk,
            rationale=f"decided by rule ({reasons})",
            model="rules",
            policy=self._policy_id,
            rules=[r.name for r in rules.matched],
            mode=self.config.policy.mode,
        )

    def _failed(self, status: Status, error: str, rules: RuleOutcome) -> Decision:
        verdict = failure_verdict(status, self.config.policy)
        if rules.verdict is not None:
            verdict = Verdict.most_restrictive(verdict, rules.verdict)
        return Decision(
            verdict=verdict,
            status=status,
            risk=1.0 if verdict is Verdict.VETO else 0.0,
            rationale=f"check did not run ({status.value}): {error}",
            model=self.backend.model_id if hasattr(self, "backend") else "none",
            policy=self._policy_id,
            rules=[r.name for r in rules.matched],
            mode=self.config.policy.mode,
            error=error,
        )

    def _finish(
        self,
        decision: Decision,
        proposal: ActionProposal,
        frames: list[Frame],
        record: dict[str, Any],
    ) -> Decision:
        decision.proposal_id = getattr(proposal, "id", "") or ""
        pending: _PendingRationale | None = record.pop("_rationale", None)
        with self._lock:
            self.stats["checks"] += 1
            self.stats["vetoes"] += decision.verdict is Verdict.VETO
            self.stats["timeouts"] += decision.status is Status.TIMEOUT
            self.stats["errors"] += decision.status is Status.ERROR
        payload: dict[str, Any] = {
            "decision": decision.model_dump(mode="json"),
            "proposal": proposal.model_dump(mode="json")
            if isinstance(proposal, ActionProposal)
            else repr(proposal)[:1000],
            "frames": [
                {"stamp": f.stamp, "source": f.source, "size": list(f.size)} for f in frames
            ],
            **record,
        }
        try:
            self.audit.append("decision", payload)
        except Exception as exc:  # an unlogged decision must not be an allow
            log.error("audit write failed: %s", exc)
            if self.config.policy.on_failure != "allow":
                decision.verdict, decision.status = Verdict.VETO, Status.ERROR
                decision.error = f"audit write failed: {exc}"
        log.debug("decision %s", decision.model_dump_json())
        if pending is not None:
            # Attached after the decision's own record, so the rationale record follows it.
            snapshot = decision.model_copy(deep=True)
            with self._rationales_idle:
                self._rationales_pending += 1
            pending.future.add_done_callback(
                lambda f: self._rationale_done(snapshot, pending, f)
            )
        return decision

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
            payload["answer"] = text[:_MAX_AUDIT_ANSWER_CHARS]
            try:
                answer = parse_answer(text)
            except ParseError as exc:
                payload["error"] = f"unparseable answer: {exc}"
            else:
                completed.hazards = answer.hazards
                completed.rationale = " ".join(
                    s for s in (answer.consequence, answer.rationale) if s
                )
                # What deciding on the whole answer would have given: an audit can find the
                # checks where the verdict alone decided differently.
                full_verdict, full_risk = decide(
                    answer, pending.verdict_probs, pending.rules, self.config.policy
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
        for callback in list(self._rationale_callbacks):
            try:
                callback(completed)
            except Exception:
                log.exception("rationale callback failed")


def _as_frames(frames: FramesArg) -> list[Frame]:
    if frames is None:
        return []
    if isinstance(frames, Frame):
        return [frames]
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise InvalidInputError(f"frames must be Frame objects, got {type(frames).__name__}")
    out = [f for f in frames if f is not None]
    for f in out:
        if not isinstance(f, Frame):
            raise InvalidInputError(f"frames must be Frame objects, got {type(f).__name__}")
    return out


__all__ = ["BackendError", "Guard"]
