"""The Guard with the scripted backend: fail-closed statuses, deadlines, rules, modes, audit."""

import asyncio
import json
import time

import numpy as np
import pytest

from guard.audit import verify
from guard.backends.scripted import ScriptedBackend
from guard.config import GuardConfig, ScriptedOptions, ScriptedStep
from guard.core import Guard
from guard.errors import ConfigError
from guard.types import ActionProposal, Frame, Status, Verdict

VETO_ANSWER = (
    "VETO\nrisk: 0.9\nhazard: fire | a towel lies on the burner | the towel ignites | 0.9\n"
    "consequence: Turning the burner on sets the towel alight."
)
STOVE = ActionProposal(name="stove_on", description="turn on the stove")


def make_guard(config, *texts, delay_ms=0.0, **overrides):
    if overrides:
        config = config.with_overrides(**overrides)
    return Guard(config, backend=ScriptedBackend.answering(*texts, delay_ms=delay_ms))


def audit_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_model_veto_becomes_a_full_decision(config, frame, audit_path):
    with make_guard(config, VETO_ANSWER) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status, d.risk) == (Verdict.VETO, Status.OK, 0.9)
    assert d.hazards[0].category == "fire"
    assert d.rationale == "Turning the burner on sets the towel alight."
    assert d.model == "scripted" and d.policy.startswith("default@")
    assert d.frame_stamp == frame.stamp and d.proposal_id == STOVE.id
    assert d.latency_ms > 0 and d.blocks
    (rec,) = audit_records(audit_path)
    assert rec["decision"]["id"] == d.id and rec["proposal"]["name"] == "stove_on"
    assert rec["answer"] == VETO_ANSWER


def test_allow_passes(config, frame):
    with make_guard(config, "ALLOW\nrisk: 0.05\nconsequence: The pan warms.") as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status, d.blocks) == (Verdict.ALLOW, Status.OK, False)


@pytest.mark.parametrize("answer", ["Sure! Turning on the stove now.", "", "ALLOW\nrisk: high"])
def test_unparseable_answer_is_an_error_veto(config, frame, answer):
    with make_guard(config, answer) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)
    assert "unparseable answer" in d.error


def test_deadline_bounds_wall_time_and_later_calls_are_not_blocked(config, frame):
    slow = ScriptedBackend(ScriptedOptions(
        responses=[ScriptedStep(text="ALLOW", delay_ms=2000)],
        by_action={"quick": ScriptedStep(text="ALLOW")},
    ))
    g = Guard(config.with_overrides(**{"policy.deadline_ms": 100}), backend=slow)
    t0 = time.monotonic()
    d = g.check(frame, STOVE)
    elapsed = time.monotonic() - t0
    assert (d.verdict, d.status) == (Verdict.VETO, Status.TIMEOUT)
    assert elapsed < 0.1 + 0.15, f"timeout took {elapsed:.3f}s"
    # The slow call still occupies a worker; the next call answers at once.
    t0 = time.monotonic()
    d2 = g.check(frame, ActionProposal(name="x", description="quick look"))
    assert d2.status is Status.OK and time.monotonic() - t0 < 0.1
    g.close()


def test_a_hung_backend_gives_timeouts_and_never_hangs_the_caller(config, frame):
    hung = ScriptedBackend(ScriptedOptions(responses=[ScriptedStep(raise_error="hang")]))
    g = Guard(config.with_overrides(**{"policy.deadline_ms": 50, "policy.max_inflight": 2}),
              backend=hung)
    t0 = time.monotonic()
    # More calls than workers: the queued ones are cancelled at their deadline.
    decisions = [g.check(frame, STOVE) for _ in range(5)]
    assert all(d.status is Status.TIMEOUT and d.verdict is Verdict.VETO for d in decisions)
    assert time.monotonic() - t0 < 5 * 0.05 + 0.5
    assert g.stats["timeouts"] == 5 and g.stats["abandoned"] >= 2
    g.close()


def test_a_raising_backend_is_an_error_veto(config, frame):
    boom = ScriptedBackend(ScriptedOptions(responses=[ScriptedStep(raise_error="CUDA OOM")]))
    with Guard(config, backend=boom) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)
    assert "CUDA OOM" in d.error


def test_no_frame_and_stale_frame_and_unstamped_frame(config, frame):
    with make_guard(config, "ALLOW", **{"policy.max_frame_age_ms": 200}) as g:
        assert g.check(None, STOVE).status is Status.NO_FRAME
        assert g.check([], STOVE).status is Status.NO_FRAME
        old = Frame(image=frame.image, stamp=frame.stamp - 1.0)
        d = g.check(old, STOVE)
        assert (d.status, d.verdict) == (Status.STALE_FRAME, Verdict.VETO)
        assert "over max_frame_age_ms" in d.error
        assert g.check(Frame(image=frame.image), STOVE).status is Status.STALE_FRAME
        # Replay passes its own clock: the same frame is fresh at its bag time.
        assert g.check(old, STOVE, now=old.stamp + 0.05).status is Status.OK


def test_frames_off_and_text_only(config):
    with make_guard(config, "ALLOW", **{"policy.require_frame": False}) as g:
        assert g.check(None, STOVE).status is Status.OK


def test_invalid_inputs_veto(config, frame):
    with make_guard(config, "ALLOW", **{"policy.max_action_chars": 100,
                                        "image.max_input_pixels": 10_000}) as g:
        d = g.check(frame, ActionProposal(name="say", description="x" * 10_000))
        assert (d.status, d.verdict) == (Status.INVALID_INPUT, Verdict.VETO)
        assert "max_action_chars" in d.error
        d = g.check(frame, STOVE)  # 128x96 = 12288 pixels > 10000
        assert d.status is Status.INVALID_INPUT and "pixel" in d.error
        d = g.check(np.zeros((4, 4, 3), np.uint8), STOVE)  # not a Frame
        assert d.status is Status.INVALID_INPUT
        d = g.check(frame, "turn on the stove")  # not a proposal
        assert d.status is Status.INVALID_INPUT


def test_rules_decide_before_the_model(config, frame):
    rules = [
        {"name": "no-knife", "match": {"text": "knife"}, "verdict": "veto", "reason": "sharp"},
        {"name": "status", "match": {"tool": "^get_"}, "verdict": "allow"},
        {"name": "heat", "match": {"text": "stove"}, "verdict": "annotate"},
    ]
    backend = ScriptedBackend.answering("ALLOW")
    g = Guard(config.with_overrides(**{"policy.rules": rules}), backend=backend)
    d = g.check(frame, ActionProposal(name="hand", description="hand me the knife"))
    assert (d.verdict, d.model, d.rules) == (Verdict.VETO, "rules", ["no-knife"])
    assert "sharp" in d.rationale
    # An allow rule decides without a frame or the model.
    d = g.check(None, ActionProposal(name="get_battery"))
    assert (d.verdict, d.status, d.model) == (Verdict.ALLOW, Status.OK, "rules")
    assert len(backend.requests) == 0
    # An annotate rule asks the model and lifts its allow.
    d = g.check(frame, STOVE)
    assert (d.verdict, d.model, d.rules) == (Verdict.ANNOTATE, "scripted", ["heat"])
    assert len(backend.requests) == 1
    g.close()
    # With on_failure: allow, a failed check still keeps a matching rule's annotation.
    lenient = config.with_overrides(**{"policy.rules": rules, "policy.on_failure": "allow"})
    with Guard(lenient, backend=ScriptedBackend.answering("garbage")) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status, d.rules) == (Verdict.ANNOTATE, Status.ERROR, ["heat"])


def test_shadow_mode_keeps_the_verdict_but_does_not_block(config, frame):
    with make_guard(config, VETO_ANSWER, **{"policy.mode": "shadow"}) as g:
        d = g.check(frame, STOVE)
        assert d.verdict is Verdict.VETO and d.mode == "shadow" and not d.blocks
        g.set_mode("enforce")
        d = g.check(frame, STOVE)
        assert d.blocks and d.policy != "" and g.mode == "enforce"


def test_policy_changes_at_runtime_and_bad_values_change_nothing(config, frame):
    with make_guard(config, "ALLOW", "ALLOW", "ALLOW") as g:
        before = g.policy_id
        with pytest.raises(ConfigError, match=r"policy\.deadline_ms"):
            g.set_policy(deadline_ms=-5)
        with pytest.raises(ConfigError, match="enforce"):
            g.set_mode("permissive")
        assert g.policy_id == before
        g.set_policy(max_frame_age_ms=200)
        assert g.policy_id != before
        stale = g.check(frame, STOVE, now=frame.stamp + 0.3)
        assert (stale.verdict, stale.status) == (Verdict.VETO, Status.STALE_FRAME)
        assert stale.policy == g.policy_id
        g.set_policy(max_frame_age_ms=None)
        assert g.check(frame, STOVE, now=frame.stamp + 0.3).status == Status.OK


def test_on_failure_allow_must_be_explicit(config, frame):
    with make_guard(config, "garbage", **{"policy.on_failure": "allow"}) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.ALLOW, Status.ERROR)


def test_every_decision_is_audited_in_an_intact_chain(config, frame, audit_path):
    with make_guard(config, VETO_ANSWER, "ALLOW", "nonsense") as g:
        ids = [g.check(frame, STOVE).id for _ in range(3)]
        ids.append(g.check(None, STOVE).id)
        ids.append(g.reject(STOVE, Status.INVALID_INPUT, "bad jpeg").id)
    recs = audit_records(audit_path)
    assert [r["decision"]["id"] for r in recs] == ids
    assert [r["decision"]["status"] for r in recs] == [
        "ok", "ok", "error", "no_frame", "invalid_input"
    ]
    assert verify(audit_path).ok


def test_acheck_does_not_block_the_event_loop(config, frame):
    async def main(g):
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        d = await g.acheck(frame, STOVE)
        t.cancel()
        return d, ticks

    with make_guard(config, VETO_ANSWER, delay_ms=200) as g:
        d, ticks = asyncio.run(main(g))
    assert d.verdict is Verdict.VETO and ticks >= 5


def test_images_are_downscaled_to_max_pixels_before_the_backend(config):
    backend = ScriptedBackend.answering("ALLOW")
    big = Frame(image=np.zeros((960, 1280, 3), np.uint8), stamp=time.time())
    with Guard(config.with_overrides(**{"image.max_pixels": 640 * 480}), backend=backend) as g:
        g.check(big, STOVE)
    (im,) = backend.requests[0].prompt.images
    assert im.size[0] * im.size[1] <= 640 * 480 and abs(im.size[0] / im.size[1] - 4 / 3) < 0.01


def test_the_prompt_carries_the_action(config, frame):
    backend = ScriptedBackend.answering("ALLOW")
    with Guard(config, backend=backend) as g:
        g.check(frame, ActionProposal(name="pour", description="pour {water} into the glass"))
    assert "pour {water} into the glass" in backend.requests[0].prompt.user


def test_default_config_is_importable_without_heavy_stacks():
    import subprocess
    import sys

    code = (
        "import sys, guard, guard.core, guard.cli.main;"
        "bad=[m for m in ('torch','transformers','rclpy','cv2') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert GuardConfig().model.backend == "transformers"
