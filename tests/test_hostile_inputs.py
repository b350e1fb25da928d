"""Hostile inputs to the guard's front doors, found by red-teaming the decision core after the
obvious cases were fixed (tests/test_fail_closed.py). Each case once raised out of
`Guard.check`, returned a decision the audit log did not hold, or let a check run without a
real deadline. The promise: a check that did not genuinely run, on time, on a fresh frame, is
a veto; `Guard.check` never raises; every decision is audited.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from guard.backends.scripted import ScriptedBackend
from guard.cli.main import main
from guard.config import GuardConfig, load_config
from guard.core import BatchItem, Guard
from guard.errors import ConfigError
from guard.faults import ItemsRaise, NanWithoutRepr, Unprintable, UnreadableMapping
from guard.types import ActionProposal, Decision, Frame, Status, Verdict, jsonable
from guard.wire import ProposalError, parse_tool_call, proposal_from_json

ALLOW = "ALLOW\nrisk: 0.0"
STOVE = ActionProposal(name="stove_on", description="turn on the stove")


def _audited(path: Path, decision: Decision) -> bool:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return any(r.get("decision", {}).get("id") == decision.id for r in records)


def _guard(config: GuardConfig, **overrides: Any) -> Guard:
    if overrides:
        config = config.with_overrides(**overrides)
    return Guard(config, backend=ScriptedBackend.answering(ALLOW))


# -- frames that skipped their validation -----------------------------------------------------
# `Frame.model_copy(update=...)` and `Frame.model_construct` do not validate. A stamp that was
# not a number made `Guard.check` raise TypeError; one over a float's range, OverflowError;
# numpy stamps and non-array images made the audit write fail (an unlogged veto).


@pytest.mark.parametrize(
    ("stamp", "status"),
    [
        ("abc", Status.INVALID_INPUT),  # raised TypeError
        (b"x", Status.INVALID_INPUT),  # raised TypeError
        ([1.0], Status.INVALID_INPUT),  # raised TypeError
        (complex(1, 0), Status.INVALID_INPUT),  # raised TypeError
        (True, Status.INVALID_INPUT),  # a bool is no time
        (10**400, Status.STALE_FRAME),  # raised OverflowError: an infinite time is stale
    ],
    ids=["str", "bytes", "list", "complex", "bool", "int-over-float"],
)
def test_a_stamp_that_skipped_validation_is_a_veto_not_an_exception(
    config: GuardConfig, frame: Frame, audit_path: Path, stamp: Any, status: Status
) -> None:
    bad = frame.model_copy(update={"stamp": stamp})
    with _guard(config) as g:
        d = g.check(bad, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, status), d.error
    assert _audited(audit_path, d)


@pytest.mark.parametrize("kind", [np.int64, np.array])
def test_a_numpy_stamp_is_a_time_and_audited(
    config: GuardConfig, frame: Frame, audit_path: Path, kind: Any
) -> None:
    """A numpy number as a stamp (set without validation) made the audit write fail: the
    decision was an unlogged veto. Read again as a float, it is an ordinary time."""
    now = kind(time.time())
    with _guard(config, **{"policy.max_frame_age_ms": 60_000}) as g:
        d = g.check(frame.model_copy(update={"stamp": now}), STOVE)
    assert (d.verdict, d.status) == (Verdict.ALLOW, Status.OK), d.error
    assert _audited(audit_path, d)
    assert isinstance(d.frame_stamp, float)


@pytest.mark.parametrize("image", [None, [[1, 2, 3]], b"\x00" * 12, memoryview(b"abc")],
                         ids=["none", "list", "bytes", "memoryview"])
def test_an_image_that_is_not_an_array_is_an_audited_invalid_input(
    config: GuardConfig, audit_path: Path, image: Any
) -> None:
    bad = Frame.model_construct(image=image, stamp=time.time(), source="c", stamp_ns=None)
    with _guard(config) as g:
        d = g.check(bad, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT), d.error
    assert _audited(audit_path, d)


@pytest.mark.parametrize("stamp_ns", [2**64, -(2**63) - 1, True],
                         ids=["over-int64", "under-int64", "bool"])
def test_stamp_ns_follows_the_int64_rule_of_the_decision(
    config: GuardConfig, frame: Frame, stamp_ns: Any
) -> None:
    """A frame took any stamp_ns and the decision carried it on, unvalidated, to a ROS Time
    it cannot fit; now the frame refuses it as the decision does."""
    with pytest.raises(ValueError, match="int64 nanoseconds"):
        Frame(image=frame.image, stamp=frame.stamp, stamp_ns=stamp_ns)
    with _guard(config) as g:
        d = g.check(frame.model_copy(update={"stamp_ns": stamp_ns}), STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT)


# -- arguments and proposals whose own methods fail -----------------------------------------


class _StrWithoutText(str):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    "arguments",
    [
        {Unprintable(): 1},  # the audit write failed: an unlogged veto
        {10**5000: 1},  # str() of the key: over Python's 4300-digit limit
        {"x": NanWithoutRepr(math.nan)},  # internal error, then an unlogged veto
        ItemsRaise(a=1),  # internal error, then an unlogged veto
        {"x": _StrWithoutText("text")},
    ],
    ids=["key-str-raises", "key-int-over-limit", "nan-repr-raises", "items-raises",
         "str-subclass"],
)
def test_arguments_whose_methods_fail_are_judged_and_audited(
    config: GuardConfig, frame: Frame, audit_path: Path, arguments: Any
) -> None:
    proposal = {"name": "stove_on", "description": "turn on the stove", "arguments": arguments}
    with _guard(config) as g:
        d = g.check(frame, proposal)
    assert _audited(audit_path, d), d.error
    assert d.status in (Status.OK, Status.INVALID_INPUT), d.error


def test_jsonable_is_total_and_plain() -> None:
    out = jsonable({"k": NanWithoutRepr(math.nan), "s": _StrWithoutText("t"),
                    "d": ItemsRaise(a=1), "m": UnreadableMapping()})
    assert out["k"] == "nan" and out["s"] == "t" and out["d"] == {"a": 1}
    assert out["m"].startswith("<UnreadableMapping: unreadable")
    json.dumps(out, allow_nan=False)
    assert type(out["s"]) is str


@pytest.mark.parametrize(
    "proposal",
    [
        {"name": "x", "id": Unprintable()},  # raised RuntimeError out of check
        {"name": "x", "id": 10**5000},  # raised ValueError out of check
        UnreadableMapping(),  # raised RuntimeError out of check
        {"name": "x", "arguments": {}, Unprintable(): 1},  # unlogged veto
    ],
    ids=["id-str-raises", "id-int-over-limit", "unreadable-mapping", "key-str-raises"],
)
def test_proposals_whose_methods_fail_are_audited_vetoes(
    config: GuardConfig, frame: Frame, audit_path: Path, proposal: Any
) -> None:
    with _guard(config) as g:
        d = g.check(frame, proposal)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT), d.error
    assert _audited(audit_path, d)


# -- the deadline runs from when the check was entered, never later ------------------------


@pytest.mark.parametrize("entered", ["soon", math.nan, math.inf, 10**400, True],
                         ids=["str", "nan", "inf", "int-over-float", "bool"])
def test_an_unusable_entered_is_an_audited_invalid_input(
    config: GuardConfig, frame: Frame, audit_path: Path, entered: Any
) -> None:
    """'soon' and 10**400 raised out of check; inf, an internal error; nan, a timeout."""
    with _guard(config) as g:
        d = g.check(frame, STOVE, entered=entered)
        [batched] = g.check_batch([BatchItem(frame, STOVE, entered=entered)])
    for decision in (d, batched):
        assert (decision.verdict, decision.status) == (Verdict.VETO, Status.INVALID_INPUT)
        assert _audited(audit_path, decision)


def test_an_entered_in_the_future_does_not_extend_the_deadline(
    config: GuardConfig, frame: Frame
) -> None:
    """`entered` an hour ahead made the deadline an hour later: a judge answering after
    deadline_ms was an allow. (Counted from now, it then hid a reading of another clock:
    now it is refused, tests/test_core_seams.py.)"""
    backend = ScriptedBackend.answering(ALLOW, delay_ms=600)
    with Guard(config.with_overrides(**{"policy.deadline_ms": 100}), backend=backend) as g:
        d = g.check(frame, STOVE, entered=time.monotonic() + 3600)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT)


def test_a_huge_integer_deadline_is_the_policys(config: GuardConfig, frame: Frame) -> None:
    """deadline_ms=10**400 (no shorter than the policy's) was an internal-error veto."""
    with _guard(config) as g:
        d = g.check(frame, STOVE, deadline_ms=10**400)
    assert (d.verdict, d.status) == (Verdict.ALLOW, Status.OK), d.error


def test_a_clock_reading_a_huge_integer_is_an_error_not_a_crash(
    config: GuardConfig, frame: Frame
) -> None:
    with _guard(config) as g:
        d = g.check(frame, STOVE, now=10**400)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)
    assert "not a finite time" in (d.error or "")


# -- configuration: a value that makes no promise is an error, never a quieter guard ---------


@pytest.mark.parametrize(
    "line",
    [
        "deadline_ms: .inf",  # accepted: no deadline (a hung judge held the check forever)
        "deadline_ms: 1e400",  # YAML reads it as infinity
        "deadline_ms: 1e12",  # past the thread-timeout limit: an internal error per check
        "max_frame_age_ms: .inf",  # accepted: a frame of any age was fresh
        "veto_threshold: on",  # YAML's `on` is true, and true was 1.0
        "max_inflight: yes",
    ],
)
def test_a_policy_value_that_makes_no_promise_is_a_config_error(
    tmp_path: Path, line: str
) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text(f"policy:\n  {line}\n")
    with pytest.raises(ConfigError, match=r"policy\.\w+ = "):
        load_config(path)


@pytest.mark.parametrize("value", ["[" * 50_000 + "]" * 50_000, "9" * 5000],
                         ids=["deep-nesting", "int-over-4300-digits"])
def test_yaml_python_cannot_read_is_one_config_error_line(tmp_path: Path, value: str) -> None:
    """These raised RecursionError and ValueError: a traceback from `guard check`."""
    path = tmp_path / "guard.yaml"
    path.write_text(f"policy:\n  name: {value}\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_an_alias_bomb_is_named_in_a_short_line(tmp_path: Path) -> None:
    """A million items behind a few YAML aliases were written out whole into the error
    (a billion made `guard check` hang)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 6)]
    path = tmp_path / "guard.yaml"
    path.write_text("\n".join(lines) + "\npolicy:\n  name: *l5\n")
    with pytest.raises(ConfigError, match=r"policy\.name = ") as info:
        load_config(path)
    (named,) = [part for part in str(info.value).split("; ") if "policy.name" in part]
    assert len(named) < 1000


# -- guard check: bad input is one line -------------------------------------------------------


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "f.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _check_cli(tmp_path: Path, *args: str) -> int:
    return main(["check", "--backend", "scripted", "--audit", str(tmp_path / "a.jsonl"), *args])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--deadline-ms", "inf"], "policy.deadline_ms = inf"),  # was a traceback, exit 3
        (["--arguments", '{"burner": 1, "burner": 4}'], "given twice"),  # was judged as 4
        (["--arguments", '{"burner": NaN}'], "NaN is not JSON"),  # was judged as "nan"
    ],
)
def test_cli_bad_flags_are_a_usage_error(
    tmp_path: Path, image_file: Path, capsys: pytest.CaptureFixture[str],
    flags: list[str], message: str
) -> None:
    rc = _check_cli(tmp_path, "--image", str(image_file), "--action", "stove on", *flags)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "Traceback" not in err


def test_cli_an_image_that_is_not_a_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _check_cli(tmp_path, "--image", str(tmp_path), "--action", "x") == 2
    assert "not a regular file" in capsys.readouterr().err  # was "file not found"


class _EndlessStdin:
    """Standard input that never ends (``< /dev/zero``): reading it all runs out of memory."""

    class buffer:  # the attribute sys.stdin has
        @staticmethod
        def read(n: int = -1) -> bytes:
            if n < 0:
                raise MemoryError("standard input never ends")
            return b"\0" * n


def test_cli_endless_stdin_is_a_usage_error(
    tmp_path: Path, image_file: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", _EndlessStdin)
    rc = _check_cli(tmp_path, "--image", str(image_file), "--action", "-")
    assert rc == 2
    assert "standard input holds more than" in capsys.readouterr().err


# -- JSON from outside: what readers disagree on is refused -------------------------------


def test_a_name_given_twice_is_refused_by_every_json_reader() -> None:
    """Python keeps the last of two names, other readers the first: a proxy in front of the
    guard and the guard would read two different actions from one text."""
    twice = '{"name": "look", "name": "stove_on"}'
    with pytest.raises(ProposalError, match="given twice"):
        proposal_from_json(twice, default_id="x", stamp=None)
    call = parse_tool_call({"id": "c", "function": {"name": "stove_on",
                                                      "arguments": '{"b": 1, "b": 4}'}})
    assert call.arguments is None and "given twice" in (call.error or "")


@pytest.fixture
def serve_client(config: GuardConfig) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from guard.serve import create_app

    app = create_app(config, factory=lambda: _guard(config))
    with TestClient(app) as client:
        for _ in range(200):
            if client.get("/healthz").status_code == 200:
                break
            time.sleep(0.01)
        yield client


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ('{"action": "look", "action": "turn on the stove"}', 400),  # judged the last
        ('{"action": "x", "arguments": {"burner": NaN}}', 400),  # judged as "nan"
        ('{"action": "x", "deadline_ms": true}', 422),  # read as 1 ms
        ('{"action": "x", "deadline_ms": "5"}', 422),  # read as 5 ms
        ('{"user": "x", "max_new_tokens": true}', 422),  # /v1/judge: read as 1 token
    ],
)
def test_serve_refuses_json_readers_disagree_on(serve_client: Any, body: str,
                                                status: int) -> None:
    path = "/v1/judge" if '"user"' in body else "/v1/check"
    r = serve_client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}


# -- size: refused early, audited short -----------------------------------------------------


def _record_size(path: Path, decision: Decision) -> int:
    lines = [line for line in path.read_text().splitlines() if decision.id in line]
    assert len(lines) == 1
    return len(lines[0])


def test_a_million_argument_values_are_refused_before_they_are_converted(
    config: GuardConfig, frame: Frame, audit_path: Path
) -> None:
    """A million values were all converted and rendered (seconds on the caller's thread,
    whatever the deadline), then refused for the action's length, and written whole into an
    18 MB audit record."""
    arguments = {f"k{i}": i for i in range(1_000_000)}
    with _guard(config) as g:
        d = g.check(frame, {"name": "set_joints", "arguments": arguments})
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT)
    assert "more than 10000 values" in (d.error or "")
    assert _record_size(audit_path, d) < 1_000_000


def test_an_oversized_description_is_audited_cut(
    config: GuardConfig, frame: Frame, audit_path: Path
) -> None:
    with _guard(config) as g:
        d = g.check(frame, {"name": "say", "description": "a" * 1_000_000})
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT)
    assert _record_size(audit_path, d) < 64_000  # was the whole megabyte
    (record,) = [json.loads(line) for line in audit_path.read_text().splitlines()
                 if d.id in line]
    assert record["proposal"]["description"].endswith("(1000000 characters)")


# -- the judge's answer: numbers in ASCII digits only -----------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "ALLOW\nrisk: ０",  # fullwidth zero: float() read it as 0.0
        "ALLOW\nrisk: ٠",  # Arabic-Indic zero
        "VETO\nrisk: ০.৪",  # Bengali: reads 0.4, looks like 0.8 in an audit
        "ALLOW\nrisk: 0_0",  # float() takes underscores
        "ANNOTATE\nhazard: burn|hot pan|burns|１",
    ],
)
def test_numbers_outside_ascii_digits_are_not_the_grammar(
    config: GuardConfig, frame: Frame, answer: str
) -> None:
    with Guard(config, backend=ScriptedBackend.answering(answer)) as g:
        d = g.check(frame, STOVE)
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)
    assert "is not a number" in (d.error or "")


# -- images: what the camera recorded -----------------------------------------------------


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_orientation_is_applied_as_transformers_loads_images(
    tmp_path: Path, orientation: int
) -> None:
    """A phone photo tagged 'rotate 90' was judged on its side; transformers' load_image (how
    a Hugging Face pipeline reads the same file) turns it upright."""
    from transformers.image_utils import load_image

    from guard.imaging import decode_image_file

    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"  # PNG: lossless, so the pixels compare exactly
    image.save(path, exif=exif.tobytes())
    expected = np.asarray(load_image(str(path)).convert("RGB"))
    np.testing.assert_array_equal(decode_image_file(path), expected)


# -- batches: each item its own audited decision ------------------------------------------


class _BatchingScripted(ScriptedBackend):
    """The scripted judge with a batch path (a server's)."""

    def judge_batch(self, requests: list[Any]) -> list[Any]:
        return [self.judge(r) for r in requests]


def _exits() -> Frame:
    raise SystemExit(1)


@pytest.mark.parametrize("batching", [True, False], ids=["batch-path", "one-by-one"])
def test_a_bad_batch_item_is_its_own_veto(
    config: GuardConfig, frame: Frame, audit_path: Path, batching: bool
) -> None:
    """A tuple instead of a BatchItem raised AttributeError out of check_batch; a frame source
    raising SystemExit on the batch's worker raised out of it too."""
    backend = _BatchingScripted.answering(ALLOW) if batching else ScriptedBackend.answering(
        ALLOW)
    items: list[Any] = [(frame, STOVE), BatchItem(_exits, STOVE), BatchItem(frame, STOVE)]
    with Guard(config, backend=backend) as g:
        bad, exits, good = g.check_batch(items)
    assert (bad.verdict, bad.status) == (Verdict.VETO, Status.INVALID_INPUT)
    assert "must be a BatchItem" in (bad.error or "")
    assert (exits.verdict, exits.status) == (Verdict.VETO, Status.ERROR)
    assert (good.verdict, good.status) == (Verdict.ALLOW, Status.OK)
    for d in (bad, exits, good):
        assert _audited(audit_path, d)


# -- ROS image messages with fields of the wrong type ------------------------------------------


def _image_msg(**fields: Any) -> Any:
    from types import SimpleNamespace

    base: dict[str, Any] = {"height": 2, "width": 2, "encoding": "rgb8", "step": 6,
                            "is_bigendian": 0, "data": bytes(12)}
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"height": "2"},  # ValueError / TypeError / AttributeError out of the conversion, not
        {"height": math.nan},  # the one-line InvalidInputError the node and replay catch
        {"width": None},
        {"step": 6.0},
        {"data": "abcdefghijkl"},
        {"data": None},
        {"data": [300] * 12},
    ],
    ids=["height-text", "height-nan", "width-none", "step-float", "data-text", "data-none",
         "data-over-255"],
)
def test_an_image_message_with_fields_of_the_wrong_type_is_invalid_input(
    fields: dict[str, Any]
) -> None:
    from guard.errors import InvalidInputError
    from guard.wire import ros_image_to_rgb

    with pytest.raises(InvalidInputError):
        ros_image_to_rgb(_image_msg(**fields), source="camera")


def test_a_compressed_image_without_bytes_is_invalid_input() -> None:
    from types import SimpleNamespace

    from guard.errors import InvalidInputError
    from guard.wire import ros_compressed_to_rgb

    for data in (None, "not bytes"):
        with pytest.raises(InvalidInputError, match="camera: data"):
            ros_compressed_to_rgb(SimpleNamespace(format="png", data=data), source="camera")


@pytest.mark.parametrize("path", ["/v1/check", "/v1/judge"])
def test_serve_refuses_more_images_than_a_check_judges(serve_client: Any, path: str) -> None:
    """Each image was decoded before the deadline was consulted: 100 000 one-pixel PNGs (9 MB,
    under the body limit) held a server worker for 10 s, to judge the newest one."""
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    one = base64.b64encode(buf.getvalue()).decode()
    body = {"images": [one] * 17, **({"action": "x"} if path == "/v1/check" else {"user": "x"})}
    r = serve_client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("images:")


def test_serve_reads_a_body_off_the_event_loop(
    serve_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON of a request was read on the event loop: while 32 MB of it were parsed (about a
    second), no probe and no other client was answered."""
    import threading

    import guard.serve.app as app_module

    started, release, parsed = threading.Event(), threading.Event(), threading.Event()
    real = app_module._parse

    def slow_parse(body: bytes, model: Any) -> Any:
        started.set()
        release.wait(20)  # a big body: parsed once the probe was answered (or 20 s passed)
        parsed.set()
        return real(body, model)

    monkeypatch.setattr(app_module, "_parse", slow_parse)
    post = threading.Thread(target=lambda: serve_client.post("/v1/check", json={"action": "x"}))
    post.start()
    assert started.wait(10)
    assert serve_client.get("/livez").status_code == 200
    answered_meanwhile = not parsed.is_set()
    release.set()
    post.join()
    assert answered_meanwhile


def test_a_megabyte_id_is_invalid_input_not_echoed(config: GuardConfig, frame: Frame) -> None:
    """An id is not in the action text, so no length limit reached it: 5 MB of one was judged
    and echoed whole in the decision (to a ROS topic, an HTTP response)."""
    with _guard(config) as g:
        d = g.check(frame, {"name": "stove_on", "id": "i" * 5_000_000})
    assert (d.verdict, d.status) == (Verdict.VETO, Status.INVALID_INPUT)
    assert len(d.proposal_id) <= 200


def test_cli_server_refuses_an_image_file_over_the_limit_before_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--server` read every image file whole into memory and sent it as base64, whatever its
    size (the local path refuses files over image.max_file_bytes before reading them)."""
    image = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                    ).save(image)
    config = tmp_path / "guard.yaml"
    config.write_text(f"image:\n  max_file_bytes: 1024\naudit:\n  path: {tmp_path / 'a.jsonl'}\n")
    rc = main(["check", "--config", str(config), "--image", str(image), "--action", "x",
               "--server", "http://127.0.0.1:9", "--server-timeout-s", "5"])
    decision = json.loads(capsys.readouterr().out)
    assert rc == 3
    assert decision["status"] == "invalid_input" and "byte limit" in decision["error"]


@pytest.mark.parametrize("stamp", ["12:00", 10**400, math.nan, [1.0]],
                         ids=["text", "int-over-float", "nan", "list"])
def test_reject_takes_any_frame_stamp(
    config: GuardConfig, audit_path: Path, stamp: Any
) -> None:
    """A front end's reject() with a stamp that was no finite number raised out of the audit
    step (text, a list, 10**400) instead of returning its veto."""
    with _guard(config) as g:
        d = g.reject(STOVE, Status.INVALID_INPUT, "the image did not decode",
                     frame_stamp=stamp)
    assert (d.verdict, d.status, d.frame_stamp) == (Verdict.VETO, Status.INVALID_INPUT, None)
    assert _audited(audit_path, d)


# -- deterministic rules: obfuscated words still match a veto rule ----------------------------


@pytest.mark.parametrize(
    "description",
    ["hand over the kn\u200bife",  # a zero-width space splits the word for the regex only
     "hand over the ｋｎｉｆｅ",  # fullwidth letters
     "hand over the kni\u00adfe"],  # a soft hyphen
    ids=["zero-width-space", "fullwidth", "soft-hyphen"],
)
def test_a_veto_rule_is_not_dodged_by_invisible_or_fullwidth_characters(
    config: GuardConfig, frame: Frame, description: str
) -> None:
    """The rule's regex missed the word, and the judge (answering ALLOW here) decided alone."""
    rule = {"name": "no-knife", "match": {"text": "knife"}, "verdict": "veto"}
    with _guard(config, **{"policy.rules": [rule]}) as g:
        d = g.check(frame, {"name": "hand_over", "description": description})
    assert (d.verdict, d.status, d.rules) == (Verdict.VETO, Status.OK, ["no-knife"])


def test_folding_never_widens_an_allow_rule(config: GuardConfig, frame: Frame) -> None:
    rule = {"name": "looking-is-fine", "match": {"tool": "^look$"}, "verdict": "allow"}
    with Guard(config.with_overrides(**{"policy.rules": [rule]}),
               backend=ScriptedBackend.answering("VETO")) as g:
        plain = g.check(frame, {"name": "look"})
        dodged = g.check(frame, {"name": "ｌｏｏｋ"})
    assert plain.rules == ["looking-is-fine"] and plain.verdict is Verdict.ALLOW
    assert dodged.rules == [] and dodged.verdict is Verdict.VETO  # the judge decided


# A rule's pattern that backtracks badly on the action text: `(a|aa)+z` takes seconds on 32
# a's (with `re`: 1.5 s here; `(\w+\s?)+$` took 4.5 s on 25 characters), and ran in the
# caller's thread before the deadline was looked at, so the caller got its timeout veto late.
SLOW_RULE = {"name": "slow", "match": {"text": "(a|aa)+z"}, "verdict": "veto"}
SLOW_ACTION = {"name": "say", "description": "a" * 32}


def test_a_rule_pattern_that_backtracks_stops_at_the_deadline(
    config: GuardConfig, frame: Frame, audit_path: Path
) -> None:
    with _guard(config, **{"policy.rules": [SLOW_RULE]}) as g:
        d = g.check(frame, SLOW_ACTION, deadline_ms=50)
    assert (d.verdict, d.status, d.rules) == (Verdict.VETO, Status.TIMEOUT, [])
    assert d.error is not None and "still evaluating policy rules" in d.error
    assert _audited(audit_path, d)


def test_rules_that_did_not_finish_veto_even_under_on_failure_allow(
    config: GuardConfig, frame: Frame, audit_path: Path
) -> None:
    """A rule not known not to match is taken as matching: padding the action text until a
    veto rule is too slow must not turn that rule into an allow."""
    first = {"name": "say-is-fine", "match": {"tool": "^say$"}, "verdict": "allow"}
    with _guard(config, **{"policy.rules": [first, SLOW_RULE],
                           "policy.on_failure": "allow"}) as g:
        d = g.check(frame, SLOW_ACTION, deadline_ms=50)
        quick = g.check(frame, {"name": "say", "description": "hello"})
    assert (d.verdict, d.status, d.rules) == (Verdict.VETO, Status.TIMEOUT, ["say-is-fine"])
    assert _audited(audit_path, d)
    assert (quick.verdict, quick.status, quick.rules) == (Verdict.ALLOW, Status.OK,
                                                          ["say-is-fine"])


def test_a_slow_rule_in_a_batch_is_that_items_timeout(
    config: GuardConfig, frame: Frame, audit_path: Path
) -> None:
    """The batch path evaluated the rules of every item in the caller's thread too."""
    with Guard(config.with_overrides(**{"policy.rules": [SLOW_RULE]}),
               backend=_BatchingScripted.answering(ALLOW)) as g:
        slow, good = g.check_batch([BatchItem(frame, SLOW_ACTION, deadline_ms=50),
                                    BatchItem(frame, STOVE)])
    assert (slow.verdict, slow.status) == (Verdict.VETO, Status.TIMEOUT)
    assert "still evaluating policy rules" in (slow.error or "")
    assert (good.verdict, good.status) == (Verdict.ALLOW, Status.OK)
    assert _audited(audit_path, slow) and _audited(audit_path, good)


def test_cli_lines_show_control_characters_as_escapes(
    tmp_path: Path, image_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path or a backend's message with a line break and a terminal escape sequence was
    printed raw: a second, forged line on stderr, and the terminal's colours changed."""
    assert _check_cli(tmp_path, "--image", "a\nguard check: ok\x1b[2J.png", "--action", "x") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "a\\nguard check" in err

    config = tmp_path / "guard.yaml"
    config.write_text("model:\n  backend: scripted\n  warmup: false\n  scripted:\n"
                      "    responses: [{raise_error: \"boom\\nguard check: ok\\u001b[2J\"}]\n")
    assert main(["check", "--config", str(config), "--audit", str(tmp_path / "a.jsonl"),
                 "--image", str(image_file), "--action", "x"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "boom\\nguard check" in err


def test_a_pixel_budget_beyond_any_input_is_a_config_error(tmp_path: Path) -> None:
    """max_pixels had no upper bound: with min_pixels as large, a backend with a grid enlarged
    every frame to 10^10 pixels (30 GB: a MemoryError, or the OOM killer without a limit)."""
    path = tmp_path / "guard.yaml"
    path.write_text("image:\n  max_pixels: 10000000000\n  min_pixels: 10000000000\n")
    with pytest.raises(ConfigError, match=r"image\.max_pixels = "):
        load_config(path)


@pytest.mark.parametrize("body", [b"\xff\xfe", b'user: "{action}"\nname: ' + b"[" * 50_000],
                         ids=["not-utf8", "deep-nesting"])
def test_a_template_python_cannot_read_is_a_config_error(tmp_path: Path, body: bytes) -> None:
    """UnicodeDecodeError and RecursionError came out of load_template, and `guard check`
    called them 'model did not load'."""
    from guard.prompting import load_template

    path = tmp_path / "mine.yaml"
    path.write_bytes(body)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_template(str(path))
