"""Hostile inputs to the core: each case once gave a silent allow, an exception or an unaudited
veto (issue: fail closed for real). Every decision here must be a veto unless the check
genuinely ran, and every decision must be in the audit log."""

import io
import json
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from guard.backends.base import JudgeOutput
from guard.backends.scripted import ScriptedBackend
from guard.config import ScriptedOptions, ScriptedStep
from guard.core import Guard
from guard.freshness import frame_freshness
from guard.imaging import decode_image_bytes
from guard.types import ActionProposal, Frame, Status, Verdict

ALLOW = "ALLOW\nrisk: 0.0"
STOVE = ActionProposal(name="stove_on", description="turn on the stove")


def audit_records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def guard_answering(config, *texts, **overrides):
    if overrides:
        config = config.with_overrides(**overrides)
    return Guard(config, backend=ScriptedBackend.answering(*texts))


class FixedBackend:
    """A backend that returns one prepared JudgeOutput (or raises one exception)."""

    name = "fixed"
    model_id = "fixed"

    def __init__(self, output=None, exc=None):
        self.output, self.exc = output, exc

    def judge(self, request):
        if self.exc is not None:
            raise self.exc
        return self.output

    def close(self):
        pass


# -- the one freshness rule ----------------------------------------------------------------


@pytest.mark.parametrize("ahead_s", [5.0, 3600.0])
def test_a_frame_stamped_in_the_future_is_stale(config, frame, ahead_s):
    future = frame.model_copy(update={"stamp": time.time() + ahead_s})
    with guard_answering(config, ALLOW) as g:
        d = g.check(future, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.STALE_FRAME)
    assert "ahead of the guard's clock" in d.error


@pytest.mark.parametrize("stamp", [math.nan, math.inf, -math.inf])
def test_a_non_finite_stamp_is_stale(config, frame, stamp):
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame.model_copy(update={"stamp": stamp}), STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.STALE_FRAME)
    assert d.frame_stamp is None  # JSON cannot carry NaN; the record stays valid JSON
    json.loads(d.model_dump_json())


def test_a_non_finite_clock_is_an_error(config, frame):
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, STOVE, now=math.nan)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)


def test_the_rule_itself():
    rule = {"max_age_ms": 1000.0, "max_skew_ms": 100.0}
    assert frame_freshness(10.0, 10.5, **rule).fresh
    assert frame_freshness(10.05, 10.0, **rule).fresh  # within the skew
    assert frame_freshness(10.2, 10.0, **rule).status is Status.STALE_FRAME
    assert frame_freshness(8.0, 10.0, **rule).status is Status.STALE_FRAME
    assert frame_freshness(None, 10.0, **rule).status is Status.STALE_FRAME
    assert frame_freshness(None, 10.0, **rule, has_frame=False).status is Status.NO_FRAME
    assert frame_freshness(1e308, -1e308, **rule).status is Status.STALE_FRAME  # overflow
    # No age limit: a finite stamp not ahead of the clock is fine, a future one is not.
    assert frame_freshness(0.0, 1e9, max_age_ms=None, max_skew_ms=100.0).fresh
    assert not frame_freshness(1e9, 0.0, max_age_ms=None, max_skew_ms=100.0).fresh


# -- non-finite numbers from a backend ------------------------------------------------------


@pytest.mark.parametrize(
    "probs",
    [
        {"allow": math.nan, "veto": 0.1},
        {"allow": math.inf, "veto": 0.0},
        {"allow": 1.5, "veto": -0.5},
        {"allow": 0.0, "veto": 0.0},
        {},
        {"allow": "0.9"},
    ],
)
def test_non_finite_or_negative_verdict_probabilities_are_an_error(config, frame, probs):
    backend = FixedBackend(JudgeOutput(text="ALLOW", verdict_probs=probs))
    with Guard(config, backend=backend) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR), d
    assert "backend answer rejected" in d.error


def test_finite_probabilities_still_decide(config, frame):
    backend = FixedBackend(JudgeOutput(text="ALLOW", verdict_probs={"allow": 0.9, "veto": 0.1}))
    with Guard(config, backend=backend) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.ALLOW, Status.OK)
    assert d.risk == pytest.approx(0.1)


@pytest.mark.parametrize("output", [None, "ALLOW", JudgeOutput(text=None)])  # type: ignore[arg-type]
def test_a_backend_returning_something_else_is_an_error(config, frame, output):
    with Guard(config, backend=FixedBackend(output)) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)


def test_an_endless_answer_is_refused_before_parsing(config, frame):
    text = "VETO\n" + "consequence: x\n" * 200_000
    with Guard(config, backend=FixedBackend(JudgeOutput(text=text))) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)
    assert "characters, over" in d.error


# -- the deadline is a promise from the moment check is entered -----------------------------


def test_a_frame_source_that_hangs_is_a_timeout(config, frame, audit_path):
    release = threading.Event()

    def camera():
        release.wait(30)
        return frame

    with guard_answering(config, ALLOW, **{"policy.deadline_ms": 200}) as g:
        d = g.check(camera, STOVE)
        release.set()
    assert (d.verdict, d.status) == (Verdict.VETO, Status.TIMEOUT)
    assert "acquiring frames" in d.error
    assert len(audit_records(audit_path)) == 1


def test_resizing_huge_frames_sits_inside_the_deadline(config):
    """Four 7000x7000 frames, 200 ms: resizing once ran on the caller's thread before the
    deadline was consulted, and the late answer was accepted as ALLOW/ok."""
    big = np.zeros((7000, 7000, 3), dtype=np.uint8)
    frames = [Frame(image=big, stamp=time.time(), source=f"f{i}") for i in range(4)]
    overrides = {"policy.deadline_ms": 200, "image.max_frames": 4,
                 "image.max_input_pixels": 50_000_000}
    with guard_answering(config, ALLOW, **overrides) as g:
        d = g.check(frames, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.TIMEOUT), d.error


def test_an_answer_after_the_deadline_is_a_timeout(config, frame, monkeypatch):
    """A job that finished, but after the deadline (the caller's thread was descheduled):
    the answer is not taken."""
    import guard.core as core

    with guard_answering(config, ALLOW, **{"policy.deadline_ms": 1000}) as g:
        real = time.monotonic
        calls = {"n": 0}

        def clock():
            calls["n"] += 1
            # entry reads the real time; every later reading is 10 s on
            return real() if calls["n"] == 1 else real() + 10.0

        monkeypatch.setattr(core.time, "monotonic", clock)
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.TIMEOUT)


# -- never raises, always audited ------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"obj": object()},
        {"blob": b"\x00\x01"},
        {"array": np.zeros((3, 3))},
        {"scalar": np.float32(1.5)},
        # NaN and infinities are refused, as the wire readers refuse them:
        # tests/test_core_seams.py
        {"big": 10**5000},
        {"text": "lone \ud800 surrogate"},
    ],
)
def test_odd_arguments_are_judged_and_audited(config, frame, audit_path, arguments):
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, {"name": "grip", "arguments": arguments})
    assert d.status is Status.OK
    (rec,) = audit_records(audit_path)
    assert rec["decision"]["id"] == d.id


def deep(n):
    value: object = "leaf"
    for _ in range(n):
        value = {"k": value}
    return value


@pytest.mark.parametrize("depth", [40, 900, 10_000])
def test_deeply_nested_arguments_are_invalid_input(config, frame, audit_path, depth):
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, {"name": "grip", "arguments": {"a": deep(depth)}})
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT)
    assert "nest deeper" in d.error
    assert len(audit_records(audit_path)) == 1


def test_a_self_referencing_argument_is_invalid_input(config, frame):
    loop: dict = {}
    loop["self"] = loop
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, {"name": "grip", "arguments": {"a": loop}})
    assert d.status is Status.INVALID_INPUT


@pytest.mark.parametrize(
    "proposal",
    [
        {"name": ""},
        {"name": "   ", "description": "turn on the stove"},
        {"name": "x", "description": "   "},  # judged text would be "x": fine, see below
        {"description": "no name"},
        {"name": "x", "unknown": 1},
        object(),
        None,
        "stove_on",
    ],
)
def test_bad_proposals_are_audited_vetoes(config, frame, audit_path, proposal):
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, proposal)
    if proposal == {"name": "x", "description": "   "}:
        assert d.status is Status.OK  # the tool name is the action
        return
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT), d
    assert len(audit_records(audit_path)) == 1


def test_a_proposal_changed_after_validation_is_checked_again(config, frame):
    p = ActionProposal(name="grip")
    p.name = ""  # not validated on assignment
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, p)
    assert d.status is Status.INVALID_INPUT


def test_lone_surrogates_are_audited(config, frame, audit_path):
    p = {"name": "grip\udcff", "description": "pass the \ud800 knife",
         "arguments": {"\udc80": "x"}}
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, p)
    assert d.status is Status.OK
    (rec,) = audit_records(audit_path)
    assert rec["proposal"]["description"] == "pass the \\ud800 knife"


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()])
def test_a_backend_raising_base_exceptions_is_an_error_veto(config, frame, audit_path, exc):
    with Guard(config, backend=FixedBackend(exc=exc)) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)
    assert len(audit_records(audit_path)) == 1


def test_an_interrupt_in_the_caller_is_audited_then_raised(config, frame, audit_path,
                                                           monkeypatch):
    import guard.core as core

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with guard_answering(config, ALLOW) as g:
        monkeypatch.setattr(core, "evaluate_rules", interrupted)
        with pytest.raises(KeyboardInterrupt):
            g.check(frame, STOVE)
    (rec,) = audit_records(audit_path)
    assert rec["decision"]["verdict"] == "veto" and "interrupted" in rec["decision"]["error"]


def test_an_empty_action_text_is_invalid_input(config, frame):
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, ActionProposal.model_construct(
            id="x", name="", description="", arguments={}, stamp=None))
    assert d.status is Status.INVALID_INPUT


# -- images ------------------------------------------------------------------------------


def _encoded(array, fmt):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def test_a_16_bit_png_is_scaled_not_clipped_to_white():
    gray = np.full((8, 8), 32768, dtype=np.uint16)
    rgb = decode_image_bytes(_encoded(gray, "PNG"))
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
    assert int(rgb[0, 0, 0]) == 128


def test_a_float_image_with_nan_is_refused(config, frame):
    from guard.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="NaN"):
        decode_image_bytes(_encoded(np.full((8, 8), np.nan, dtype=np.float32), "TIFF"))
    ok = decode_image_bytes(_encoded(np.full((8, 8), 0.5, dtype=np.float32), "TIFF"))
    assert int(ok[0, 0, 0]) == 128


# -- the test double stays bounded ------------------------------------------------------------


def test_the_scripted_backend_keeps_only_recent_images(config, frame):
    backend = ScriptedBackend(ScriptedOptions(responses=[ScriptedStep(text=ALLOW)]))
    with Guard(config, backend=backend) as g:
        for _ in range(40):
            g.check(frame.model_copy(update={"stamp": time.time()}), STOVE)
    with_images = sum(1 for r in backend.requests if r.prompt.images)
    assert len(backend.requests) == 40 and with_images == 16


# -- the CLI -------------------------------------------------------------------------------


def _cli(args, tmp_path, stdin=b""):
    return subprocess.run(
        [sys.executable, "-m", "guard.cli.main", "check", *args,
         "--audit", str(tmp_path / "a.jsonl"), "--backend", "scripted"],
        input=stdin, capture_output=True, timeout=120,
    )


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "f.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("depth", [900, 10_000])
def test_cli_deep_arguments_are_an_audited_veto_without_traceback(tmp_path, image_file, depth):
    args = json.dumps({"a": deep(depth)}) if depth < 1000 else (
        '{"a":' * depth + "1" + "}" * depth)
    r = _cli(["--image", str(image_file), "--action", "grip", "--arguments", args], tmp_path)
    assert r.returncode == 3, r.stderr
    assert b"Traceback" not in r.stderr
    assert json.loads(r.stdout)["status"] == "invalid_input"
    assert len(audit_records(tmp_path / "a.jsonl")) == 1


def test_cli_invalid_utf8_on_stdin_is_judged_and_audited(tmp_path, image_file):
    r = _cli(["--image", str(image_file), "--action", "-"], tmp_path,
             stdin=b"turn on the \xff\xfe stove")
    assert b"Traceback" not in r.stderr
    assert r.returncode in (0, 3)
    (rec,) = audit_records(tmp_path / "a.jsonl")
    assert "\\xff" in rec["proposal"]["description"]


def test_cli_empty_tool_name_is_invalid_input(tmp_path, image_file):
    r = _cli(["--image", str(image_file), "--action", "x", "--tool", ""], tmp_path)
    assert r.returncode == 3 and json.loads(r.stdout)["status"] == "invalid_input"


def test_invalid_input_found_while_preparing_is_invalid_input(config, frame, monkeypatch):
    """Bad input found on the worker (while resizing) is invalid_input, not 'backend failed'."""
    import guard.core as core
    from guard.errors import InvalidInputError

    def refuse(*a, **k):
        raise InvalidInputError("frame: odd")

    monkeypatch.setattr(core, "resize_for_judge", refuse)
    with guard_answering(config, ALLOW) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status, d.error) == (Verdict.VETO, Status.INVALID_INPUT, "frame: odd")
