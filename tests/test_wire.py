"""guard.wire: the one adapter from wire formats (ROS images, stamps, proposals, tool calls).

The node's and replay's entry points are tested on real rclpy messages and a real bag in
tests/ros/test_wire_ros.py; here the adapter itself, on the message shapes it meets: plain
objects, rclpy-like `array.array` data, rosbags-like numpy data.
"""

from __future__ import annotations

import array
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from guard import frames
from guard.errors import InvalidInputError
from guard.types import ActionProposal
from guard.wire import (
    SUPPORTED_ENCODINGS,
    ProposalError,
    header_stamp_ns,
    ns_to_seconds,
    ns_to_time,
    parse_tool_call,
    proposal_fields_from_msg,
    proposal_from_call,
    proposal_from_json,
    proposal_from_msg,
    proposal_from_tool_call,
    ros_compressed_to_rgb,
    ros_image_to_rgb,
    ros_message_to_rgb,
    seconds_to_ns,
    time_to_ns,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wire_cases import Case, cases, opencv_yuv

CASES = cases()


def _want(case: Case) -> np.ndarray:
    if case.want is not None:
        return case.want
    pytest.importorskip("cv2")
    return opencv_yuv(case)


def test_every_supported_encoding_has_a_case() -> None:
    assert sorted({c.encoding.lower() for c in CASES}) == sorted(SUPPORTED_ENCODINGS)


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.encoding}{'-be' if c.is_bigendian else ''}" for c in CASES]
)
@pytest.mark.parametrize("buffer", ["bytes", "array", "numpy", "list"])
def test_encodings_decode_to_the_expected_rgb(case: Case, buffer: str) -> None:
    data = {
        "bytes": case.data,
        "array": array.array("B", case.data),  # rclpy
        "numpy": np.frombuffer(case.data, np.uint8).copy(),  # rosbags
        "list": list(case.data),  # hand-built
    }[buffer]
    msg = types.SimpleNamespace(**{**case.fields(), "data": data})
    out = ros_image_to_rgb(msg, source="cam")
    assert out.dtype == np.uint8 and out.shape == (case.height, case.width, 3)
    assert out.flags["C_CONTIGUOUS"]
    if isinstance(data, np.ndarray):  # rosbags hands a view of its buffer: never alias it
        assert not np.shares_memory(out, data)
    np.testing.assert_array_equal(out, _want(case))
    # The frame sources' name is the same function, and so is the dispatching one.
    assert frames.ros_image_to_rgb is ros_image_to_rgb
    np.testing.assert_array_equal(ros_message_to_rgb(msg), out)


@pytest.mark.parametrize("case", [c for c in CASES if c.want is not None and not c.is_bigendian],
                         ids=lambda c: c.encoding)
def test_unpadded_rows_are_copied_not_aliased(case: Case) -> None:
    row = case.step - 5  # wire_cases pads 5 bytes per row
    rows = np.frombuffer(case.data, np.uint8).reshape(case.height, case.step)[:, :row].copy()
    data = rows.reshape(-1)  # as rosbags hands it over: a numpy view of its buffer
    msg = types.SimpleNamespace(**{**case.fields(), "step": row, "data": data})
    out = ros_image_to_rgb(msg)
    np.testing.assert_array_equal(out, case.want)
    assert not np.shares_memory(out, data)


def test_the_last_row_may_lack_its_padding_and_the_result_never_aliases() -> None:
    case = next(c for c in CASES if c.encoding == "rgb8")
    data = bytearray(case.data[: -(case.step - case.width * 3)])
    msg = types.SimpleNamespace(**{**case.fields(), "data": data})
    out = ros_image_to_rgb(msg)
    np.testing.assert_array_equal(out, case.want)
    data[0] ^= 0xFF
    np.testing.assert_array_equal(out, case.want)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding": "nv21"}, "unsupported image encoding 'nv21'"),
        ({"height": 0}, "empty"),
        ({"step": 10}, "needs step >= 18"),
        ({"data": b"\x00" * 40}, "and 87 bytes, got step 23 and 40 bytes"),
        ({"encoding": "yuyv", "width": 3, "step": 6}, "even width"),
    ],
)
def test_bad_images_say_why(change: dict, message: str) -> None:
    case = next(c for c in CASES if c.encoding == "rgb8")
    msg = types.SimpleNamespace(**{**case.fields(), **change})
    with pytest.raises(InvalidInputError, match=message):
        ros_image_to_rgb(msg, source="cam")


def test_pixel_limit_before_the_data_is_touched() -> None:
    msg = types.SimpleNamespace(height=10_000, width=10_000, encoding="rgb8", step=30_000,
                                is_bigendian=0, data=b"")
    with pytest.raises(InvalidInputError, match="over the 1000000 pixel limit"):
        ros_image_to_rgb(msg, max_input_pixels=1_000_000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float_images_must_be_finite(bad: float) -> None:
    depth = np.full((2, 2), 0.5, np.float32)
    depth[1, 1] = bad
    msg = types.SimpleNamespace(height=2, width=2, encoding="32FC1", step=8, is_bigendian=0,
                                data=depth.tobytes())
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        ros_image_to_rgb(msg, source="depth")


def test_compressed_images() -> None:
    import io

    from PIL import Image

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:, :, 2] = 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    msg = types.SimpleNamespace(format="png", data=np.frombuffer(buf.getvalue(), np.uint8))
    np.testing.assert_array_equal(ros_compressed_to_rgb(msg), rgb)
    np.testing.assert_array_equal(ros_message_to_rgb(msg), rgb)
    with pytest.raises(InvalidInputError, match="not a decodable image"):
        ros_compressed_to_rgb(types.SimpleNamespace(format="jpeg", data=b"\xff\xd8 no"))


# -- stamps ----------------------------------------------------------------------------------


def _stamp(ns: int) -> types.SimpleNamespace:
    sec, nanosec = divmod(ns, 1_000_000_000)
    return types.SimpleNamespace(sec=sec, nanosec=nanosec)


def test_stamps_round_trip_exactly_where_float_seconds_do_not() -> None:
    rng = random.Random(12)
    stamps = [rng.randrange(0, 2**31 * 1_000_000_000) for _ in range(10_000)]
    for ns in stamps:
        header = types.SimpleNamespace(stamp=_stamp(ns))
        got = header_stamp_ns(header)
        assert got == ns and ns_to_time(got) == divmod(ns, 1_000_000_000)
        assert abs(ns_to_seconds(ns) - ns / 1e9) < 1e-6
        # the nearest nanosecond of the float: within the float's own spacing of the stamp
        assert abs(seconds_to_ns(ns_to_seconds(ns)) - ns) <= 256
    # Why the integer is kept: float seconds lose most epoch stamps (the old path).
    lost = sum(round((s // 10**9 + (s % 10**9) * 1e-9) * 1e9) != s for s in stamps)
    assert lost > 9_000
    assert header_stamp_ns(types.SimpleNamespace(stamp=_stamp(0))) is None  # unset
    assert header_stamp_ns(None) is None
    assert time_to_ns(_stamp(123_456_789)) == 123_456_789
    assert ns_to_time(-1) == (-1, 999_999_999)  # nanosec stays in [0, 1e9)
    assert seconds_to_ns(float("nan")) is None and seconds_to_ns(None) is None


# -- proposals -------------------------------------------------------------------------------


def _msg(**fields: object) -> types.SimpleNamespace:
    base = {"id": "p1", "name": "turn_on", "description": "turn on the stove",
            "arguments_json": '{"burner": 2}'}
    return types.SimpleNamespace(**{**base, **fields})


def test_the_node_mapping_and_replays_proposal_are_the_same() -> None:
    fields = proposal_fields_from_msg(_msg(), stamp=12.5)
    assert ActionProposal(**fields) == proposal_from_msg(_msg(), default_id="x", stamp=12.5)
    assert fields["arguments"] == {"burner": 2}
    assert proposal_from_msg(_msg(id=""), default_id="bag-7", stamp=1.0).id == "bag-7"
    assert "id" not in proposal_fields_from_msg(_msg(id=""))  # the type makes one


@pytest.mark.parametrize(
    ("arguments_json", "message"),
    [
        ("{nope", "arguments are not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"x": NaN}', "non-finite"),
        ('{"a": ' * 40 + "1" + "}" * 40, "nest deeper than 32"),
        ('{"k": "\\ud800"}', "not valid Unicode"),
    ],
)
def test_wire_damage_is_refused_the_same_by_every_message_reader(
    arguments_json: str, message: str
) -> None:
    with pytest.raises(ProposalError, match=message):
        proposal_fields_from_msg(_msg(arguments_json=arguments_json))
    with pytest.raises(ProposalError, match=message):
        proposal_from_msg(_msg(arguments_json=arguments_json), default_id="x", stamp=0.0)
    text = json.dumps({"name": "act"})[:-1] + ', "arguments": ' + arguments_json + "}"
    with pytest.raises(ProposalError):
        proposal_from_json(text, default_id="x", stamp=0.0)


def test_an_empty_name_is_the_types_refusal() -> None:
    with pytest.raises(ProposalError, match="the tool name is empty"):
        proposal_from_msg(_msg(name=" "), default_id="x", stamp=0.0)
    # The node hands the mapping on: the guard validates (and audits) it.
    assert proposal_fields_from_msg(_msg(name=""))["name"] == ""


def test_tool_calls_and_in_process_calls_give_the_same_proposal() -> None:
    chat = {"id": "c1", "type": "function",
            "function": {"name": "turn_on", "arguments": '{"burner": 2}'}}
    responses = {"type": "function_call", "call_id": "c1", "name": "turn_on",
                 "arguments": '{"burner": 2}'}
    from_call = proposal_from_call("turn_on", {"burner": 2}, id="c1")
    for call in (chat, responses):
        assert proposal_from_tool_call(call) == from_call
    assert parse_tool_call(chat).api == "chat" and parse_tool_call(responses).api == "responses"
    assert "nested too deeply" in (parse_tool_call(
        {"name": "x", "arguments": "[" * 100_000}).error or "")
    with pytest.raises(ValueError, match="the tool name is empty"):
        proposal_from_call(" ", {})
