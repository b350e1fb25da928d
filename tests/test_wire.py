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
from typing import Any

import numpy as np
import pytest

from guard import frames
from guard.errors import InvalidInputError
from guard.types import ActionProposal
from guard.wire import (
    SUPPORTED_ENCODINGS,
    InvalidStamp,
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


def _encoded(rgb: np.ndarray, fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8", "rgba8; png compressed bgr8",
                                 "jpeg", "rgb8; jpeg compressed bgr8"])
def test_compressed_image_transport_formats_decode_in_file_colour_order(fmt: str) -> None:
    """compressed_image_transport's format strings (compressed_publisher.cpp): whatever the
    raw encoding, the data is an image file OpenCV wrote from BGR, so its colours are in file
    order and decode as they are."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 40
    data = _encoded(rgb, "JPEG" if "jpeg" in fmt else "PNG")
    got = ros_compressed_to_rgb(types.SimpleNamespace(format=fmt, data=data))
    assert np.abs(got.astype(int) - rgb).max() <= (4 if "jpeg" in fmt else 0)


# compressed_depth_image_transport's ConfigHeader (compression_common.h): int32 format
# (INV_DEPTH = 0), float32 depthParam[2]; 12 bytes before the PNG or RVL data.
def _config_header(a: float = 0.0, b: float = 0.0) -> bytes:
    import struct

    return struct.pack("<iff", 0, a, b)


def _raw(encoding: str, samples: np.ndarray) -> types.SimpleNamespace:
    h, w = samples.shape
    return types.SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=0,
                                 step=w * samples.itemsize, data=samples.tobytes())


def test_compressed_depth_png_16uc1_gives_the_raw_depth_images_frame() -> None:
    """'16UC1; compressedDepth png': before, the header made the data 'not a decodable
    image'; now the frame is that of the raw 16UC1 image the plugin's subscriber rebuilds."""
    depth = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1200)
    data = _config_header() + _encoded(depth, "PNG")
    for fmt in ("16UC1; compressedDepth png", "16UC1; compressedDepth", "16UC1"):
        got = ros_compressed_to_rgb(types.SimpleNamespace(format=fmt, data=data))
        np.testing.assert_array_equal(got, ros_image_to_rgb(_raw("16UC1", depth)))


def _inverse_depth(depth: np.ndarray, depth_max: float = 10.0,
                   quantization: float = 100.0) -> tuple[np.ndarray, float, float]:
    """encodeCompressedDepthImage (codec.cpp) for 32FC1: quantised inverse depth, 0 beyond
    depth_max, and the two parameters the header carries."""
    a = np.float32(quantization * (quantization + 1.0))
    b = np.float32(1.0 - a / np.float32(depth_max))
    with np.errstate(divide="ignore"):
        inv = np.where(depth < depth_max, a / depth + b, 0).astype(np.uint16)
    return inv, float(a), float(b)


def test_compressed_depth_32fc1_is_rebuilt_from_inverse_depth() -> None:
    depth = np.linspace(1.5, 9.5, 48, dtype=np.float32).reshape(6, 8)
    inv, a, b = _inverse_depth(depth)
    data = _config_header(a, b) + _encoded(inv, "PNG")
    got = ros_compressed_to_rgb(types.SimpleNamespace(format="32FC1; compressedDepth png",
                                                      data=data))
    rebuilt = (np.float32(a) / (inv.astype(np.float32) - np.float32(b))).astype(np.float32)
    np.testing.assert_array_equal(got, ros_image_to_rgb(_raw("32FC1", rebuilt)))
    assert np.abs(rebuilt - depth).max() < 0.1  # the quantisation loses little
    # no depth (beyond depth_max) comes back NaN, refused as a raw 32FC1 image with NaN is
    depth[0, 0] = 50.0
    inv, a, b = _inverse_depth(depth)
    holes = types.SimpleNamespace(format="32FC1; compressedDepth",
                                  data=_config_header(a, b) + _encoded(inv, "PNG"))
    with pytest.raises(InvalidInputError, match="NaN"):
        ros_compressed_to_rgb(holes)


def _rvl_encode(samples: np.ndarray) -> bytes:
    """A line-by-line port of RvlCodec::CompressRVL (compressed_depth_image_transport/src/
    rvl_codec.cpp), for round trips."""
    import struct

    words: list[int] = []
    state = {"word": 0, "n": 0}

    def vle(value: int) -> None:
        while True:
            nibble = value & 0x7
            value >>= 3
            if value:
                nibble |= 0x8
            state["word"] = ((state["word"] << 4) | nibble) & 0xFFFFFFFF
            state["n"] += 1
            if state["n"] == 8:
                words.append(state["word"])
                state["word"], state["n"] = 0, 0
            if not value:
                return

    flat = [int(v) for v in samples.ravel()]
    i, previous = 0, 0
    while i < len(flat):
        zeros = 0
        while i < len(flat) and not flat[i]:
            i, zeros = i + 1, zeros + 1
        vle(zeros)
        nonzeros = 0
        while i + nonzeros < len(flat) and flat[i + nonzeros]:
            nonzeros += 1
        vle(nonzeros)
        for _ in range(nonzeros):
            current = flat[i]
            i += 1
            delta = current - previous
            vle((delta << 1) ^ (delta >> 31))
            previous = current
    if state["n"]:
        words.append((state["word"] << 4 * (8 - state["n"])) & 0xFFFFFFFF)
    h, w = samples.shape
    return struct.pack(f"<II{len(words)}I", w, h, *words)


def test_compressed_depth_rvl_decodes() -> None:
    from guard.wire.images import _rvl_samples

    # worked by hand: zeros 2, nonzeros 2, deltas +5 (zigzag 10: nibbles A 1) and 0, zeros 1,
    # nonzeros 1, delta +2 (zigzag 4): nibbles 2 2 A 1 0 1 1 4, one word, high nibble first
    word = bytes.fromhex("1401a122")  # 0x22A10114, little-endian
    np.testing.assert_array_equal(_rvl_samples(b"\x06\0\0\0\x01\0\0\0" + word, "d", 100),
                                  [[0, 0, 5, 5, 0, 7]])
    rng = np.random.default_rng(7)
    depth = rng.integers(300, 9000, (12, 16)).astype(np.uint16)
    depth[rng.random((12, 16)) < 0.3] = 0  # holes: runs of zeros
    depth[3, :] = 0
    data = _config_header() + _rvl_encode(depth)
    got = ros_compressed_to_rgb(types.SimpleNamespace(format="16UC1; compressedDepth rvl",
                                                      data=data))
    np.testing.assert_array_equal(got, ros_image_to_rgb(_raw("16UC1", depth)))
    inv, a, b = _inverse_depth(np.linspace(1.5, 9.5, 48, dtype=np.float32).reshape(6, 8))
    got = ros_compressed_to_rgb(types.SimpleNamespace(
        format="32FC1; compressedDepth rvl", data=_config_header(a, b) + _rvl_encode(inv)))
    rebuilt = (np.float32(a) / (inv.astype(np.float32) - np.float32(b))).astype(np.float32)
    np.testing.assert_array_equal(got, ros_image_to_rgb(_raw("32FC1", rebuilt)))


@pytest.mark.parametrize("fmt,data,reason", [
    ("16UC1; compressedDepth rvl", _config_header() + b"\x06\0\0\0\x04\0\0\0" + bytes(4),
     "rvl"),
    ("16UC1; compressedDepth rvl", _config_header() + b"\xff\xff\0\0\xff\xff\0\0" + bytes(8),
     "rvl reports"),
    ("16UC1; compressedDepth zstd", _config_header() + bytes(16), "codec 'zstd'"),
    ("8UC3; compressedDepth png", _config_header() + bytes(16), "encoding '8UC3'"),
    ("16UC1; compressedDepth png", _config_header() + b"not a png at all", "not a PNG"),
    ("zstd", bytes(32), "format 'zstd'"),
], ids=["rvl-runs-short", "rvl-oversized", "unknown-codec", "not-depth", "not-png", "zstd"])
def test_compressed_data_that_cannot_be_decoded_is_refused_with_its_format(
    fmt: str, data: bytes, reason: str
) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        ros_compressed_to_rgb(types.SimpleNamespace(format=fmt, data=data))


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


@pytest.mark.parametrize(("sec", "nanosec"), [
    (5, 3_000_000_000),  # would read as 8 s: a frame 3 s fresher than it is
    (5, 1_000_000_000),
    (-1, 0),
    (5, -1),
    (5.5, 0),
    ("5", 0),
    (None, 0),
])
def test_a_stamp_that_is_not_a_ros_time_is_refused(sec: Any, nanosec: Any) -> None:
    with pytest.raises(InvalidStamp):
        time_to_ns(types.SimpleNamespace(sec=sec, nanosec=nanosec))
    with pytest.raises(InvalidStamp):
        header_stamp_ns(types.SimpleNamespace(
            stamp=types.SimpleNamespace(sec=sec, nanosec=nanosec)))


def test_numpy_integer_stamp_fields_are_times() -> None:
    stamp = types.SimpleNamespace(sec=np.int32(5), nanosec=np.uint32(7))
    assert time_to_ns(stamp) == 5_000_000_007


def test_the_ros_camera_source_refuses_a_frame_whose_stamp_is_not_a_ros_time() -> None:
    """The middleware's ROS camera source ages frames by their header (stamp_mode "header"):
    sec 5 with nanosec 3e9 would have read as 8 s. Built without a ROS graph: only the
    conversion of the newest message is exercised."""
    import threading

    source = frames.RosImageTopic.__new__(frames.RosImageTopic)
    source._lock = threading.Lock()
    source.stamp_mode, source.compressed, source.topic = "header", False, "/camera/image_raw"
    stamp = types.SimpleNamespace(sec=1_700_000_000, nanosec=3_000_000_000)
    msg = types.SimpleNamespace(header=types.SimpleNamespace(stamp=stamp), height=1, width=1,
                                encoding="rgb8", is_bigendian=0, step=3, data=bytes(3))
    source._latest = (msg, 1_700_000_000.0)
    with pytest.raises(InvalidInputError, match="not a valid ROS time"):
        source()
