"""`guard replay` on hostile and damaged episodes: never a traceback, always the three outputs.

Each bad record (absurd times, arguments nested 900 deep, text UTF-8 cannot hold, an MCAP whose
record lengths are garbage) becomes counted damage with a one-line reason, every readable
proposal is still judged, and decisions.jsonl, summary.json and report.html are written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guard.backends.scripted import ScriptedBackend
from guard.cli.main import main
from guard.config import GuardConfig
from guard.core import Guard

pytest.importorskip("rosbags")

from guard.replay.episode import MAX_TIME_S, time_ns
from guard.replay.msgs import MAX_ARGUMENT_DEPTH
from guard.replay.runner import replay
from guard.replay.writer import BagFrame, BagProposal, BagRaw, write_bag

OUTPUTS = ("decisions.jsonl", "summary.json", "report.html")
T0 = 1_700_000_000.0


def cli(episode: Path, out: Path, *extra: str) -> int:
    return main(["replay", str(episode), "--out", str(out), "--backend", "scripted",
                 "--no-progress", *extra])


def outputs(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """decisions.jsonl and summary.json, after checking that all three files are there."""
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    return decisions, json.loads((out / "summary.json").read_text())


def nested(depth: int) -> dict[str, Any]:
    """{"a": {"a": ... {}}} with `depth` levels of objects."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def one_line_reasons(summary: dict[str, Any]) -> list[str]:
    details = [d["detail"] for d in summary["damaged"]["items"]]
    for detail in details:
        assert detail and "\n" not in detail and len(detail) < 400
        detail.encode("utf-8")  # writable anywhere
    return details


# -- JSONL ------------------------------------------------------------------------------------


def test_absurd_times_are_damage_and_the_rest_is_judged(tmp_path, capsys):
    lines = [
        '{"t": 1e308, "proposal": {"id": "huge", "name": "move"}}',
        '{"t": -1.0, "proposal": {"id": "negative", "name": "move"}}',
        '{"t": NaN, "proposal": {"id": "nan", "name": "move"}}',
        '{"t": Infinity, "frame": "x.png"}',
        '{"t": "1.0", "proposal": {"id": "text", "name": "move"}}',
        '{"t": true, "proposal": {"id": "bool", "name": "move"}}',
        '{"t": 1e400, "proposal": {"id": "inf", "name": "move"}}',
        '{"t": 2.0, "proposal": {"id": "good", "name": "move"}}',
    ]
    episode = tmp_path / "times.jsonl"
    episode.write_text("\n".join(lines) + "\n")
    rc = cli(episode, tmp_path / "out")
    decisions, summary = outputs(tmp_path / "out")
    assert [d["proposal"]["id"] for d in decisions] == ["good"]
    assert summary["damaged"]["by_kind"] == {"bad_line": 7}
    assert all("'t' must be a number of seconds" in r for r in one_line_reasons(summary))
    assert rc == 1  # lines were lost: the replay is not complete
    assert "Traceback" not in capsys.readouterr().err


def test_time_bounds():
    assert time_ns(0) == 0 and time_ns(1.5) == 1_500_000_000
    assert time_ns(MAX_TIME_S) == 2**63 - 1
    for bad in (1e308, -1e-9, float("nan"), float("inf"), True, "1", None, 10**30):
        assert time_ns(bad) is None, bad


def test_deep_arguments_and_lone_surrogates_are_damage_not_crashes(tmp_path, capsys):
    frame = tmp_path / "f.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "gray").save(frame)
    records: list[dict[str, Any]] = [
        {"t": 1.0, "frame": "f.png"},
        {"t": 1.1, "proposal": {"id": "deep", "name": "move", "arguments": nested(900)}},
        {"t": 1.2, "proposal": {"id": "deep-text", "name": "move",
                                "arguments": json.dumps(nested(900))}},
        {"t": 1.3, "proposal": {"id": "limit", "name": "move",
                                "arguments": nested(MAX_ARGUMENT_DEPTH)}},
        {"t": 1.5, "proposal": {"id": "ok", "name": "move", "arguments": {"v": [1, 2]}}},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records)
    # JSON escapes that decode to a lone surrogate, in each text field
    text += '{"t": 1.6, "proposal": {"id": "s-name", "name": "mo\\ud800ve"}}\n'
    text += '{"t": 1.7, "proposal": {"id": "s-desc", "name": "m", "description": "\\udfff"}}\n'
    text += '{"t": 1.8, "proposal": {"id": "\\ud800", "name": "move"}}\n'
    text += '{"t": 1.9, "proposal": {"id": "s-arg", "name": "m", "arguments": {"\\ud800": 1}}}\n'
    text += '{"t": 2.0, "proposal": {"id": "s-val", "name": "m", "arguments": {"k": "\\ud800"}}}\n'
    text += '{"t": 2.1, "proposal": {"id": "s-label", "name": "m", "label": "\\ud800"}}\n'
    text += '{"t": 2.2, "proposal": {"id": "nonfinite", "name": "m", "arguments": {"k": NaN}}}\n'
    # 10,000 levels: deeper than Python's JSON parser can recurse
    text += '{"t": 2.3, "proposal": ' + '{"a": ' * 10_000 + "1" + "}" * 10_000 + "}\n"
    (tmp_path / "episode.jsonl").write_text(text, encoding="utf-8")
    rc = cli(tmp_path, tmp_path / "out")
    decisions, summary = outputs(tmp_path / "out")
    by_id = {d["proposal"]["id"]: d for d in decisions}
    assert len(decisions) == 11
    assert {k for k, d in by_id.items() if d["status"] == "ok"} == {"ok", "limit"}
    for d in decisions:
        if d["proposal"]["id"] not in ("ok", "limit"):
            assert (d["verdict"], d["status"]) == ("veto", "invalid_input"), d
    assert f"nest deeper than {MAX_ARGUMENT_DEPTH} levels" in by_id["deep"]["error"]
    assert f"nest deeper than {MAX_ARGUMENT_DEPTH} levels" in by_id["deep-text"]["error"]
    assert "lone surrogate" in by_id["s-name"]["error"]
    assert by_id["s-name"]["proposal"]["name"] == "mo\\ud800ve"  # escaped, still recognisable
    assert "lone surrogate" in by_id["\\ud800"]["error"]  # the id, escaped
    assert "non-finite" in by_id["nonfinite"]["error"]
    assert summary["damaged"]["by_kind"] == {"bad_proposal": 9, "bad_line": 1}
    one_line_reasons(summary)
    assert rc == 1  # the 10,000-deep line could not be read at all
    assert "Traceback" not in capsys.readouterr().err
    (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_a_check_that_raises_is_an_error_veto_and_the_replay_goes_on(tmp_path, config):
    episode = tmp_path / "ep.jsonl"
    episode.write_text("".join(
        json.dumps({"t": 1.0 + k, "proposal": {"id": f"p{k}", "name": "move"}}) + "\n"
        for k in range(3)))

    class RaisingGuard(Guard):
        def judge(self, frames: Any, proposal: Any, **kw: Any) -> Any:
            if proposal.id == "p1":
                raise RuntimeError("boom")
            return super().judge(frames, proposal, **kw)

    with RaisingGuard(config, backend=ScriptedBackend()) as guard:
        result = replay(episode, tmp_path / "out", guard=guard, progress=False)
        audited = [json.loads(x) for x in Path(guard.audit.path).read_text().splitlines()]
    decisions, _ = outputs(tmp_path / "out")
    assert [d["status"] for d in decisions] == ["no_frame", "error", "no_frame"]
    assert "RuntimeError: boom" in decisions[1]["error"]
    assert decisions[1]["id"] in {a["decision"]["id"] for a in audited if "decision" in a}
    assert result.summary["n_proposals"] == 3


def test_outputs_are_written_even_when_the_guard_itself_fails(tmp_path, config):
    episode = tmp_path / "ep.jsonl"
    episode.write_text("".join(
        json.dumps({"t": 1.0 + k, "proposal": {"id": f"p{k}", "name": "move"}}) + "\n"
        for k in range(3)))

    class BrokenGuard(Guard):
        def judge(self, frames: Any, proposal: Any, **kw: Any) -> Any:
            if proposal.id == "p1":
                raise RuntimeError("boom")
            return super().judge(frames, proposal, **kw)

        def reject(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("audit disk gone")

    with BrokenGuard(config, backend=ScriptedBackend()) as guard, pytest.raises(OSError):
        replay(episode, tmp_path / "out", guard=guard, progress=False)
    decisions, summary = outputs(tmp_path / "out")
    assert [d["proposal"]["id"] for d in decisions] == ["p0"]
    assert any("replay stopped after 1 proposals: OSError" in n for n in summary["notes"])
    assert summary["lost_messages"] is None  # incomplete, not "nothing lost"


# -- bags -------------------------------------------------------------------------------------


def _string_cdr(data: bytes) -> bytes:
    """A std_msgs/String whose bytes are `data` as they are (possibly not UTF-8)."""
    n = len(data) + 1
    pad = b"\x00" * ((4 - (n % 4)) % 4)
    return b"\x00\x01\x00\x00" + n.to_bytes(4, "little") + data + b"\x00" + pad


def test_bag_proposals_with_deep_arguments_or_bad_unicode(config: GuardConfig, tmp_path):
    gray = np.full((8, 8, 3), 90, np.uint8)
    deep = json.dumps(nested(900))
    common: list[BagFrame | BagProposal | BagRaw] = [
        BagFrame(T0, gray, "rgb8"),
        BagProposal(T0 + 0.1, {"id": "deep", "name": "m", "arguments": deep}),
        BagProposal(T0 + 0.4, {"id": "fine", "name": "move"}),
    ]
    strings: list[BagFrame | BagProposal | BagRaw] = [
        BagRaw(T0 + 0.2, "/guard/proposals", "std_msgs/msg/String",
               _string_cdr(b'{"id": "escaped", "name": "x\\ud800"}')),
        BagRaw(T0 + 0.3, "/guard/proposals", "std_msgs/msg/String",
               _string_cdr(b'{"id": "raw", "name": "\xed\xa0\x80"}')),  # UTF-8 of a surrogate
    ]
    for kind, items in (("string", common + strings), ("action_proposal", common)):
        out = tmp_path / kind
        bag = write_bag(tmp_path / f"{kind}.mcap", items, bare=True,
                        proposal_type=kind)  # type: ignore[arg-type]
        with Guard(config, backend=ScriptedBackend()) as guard:
            replay(bag, out, guard=guard, progress=False)
        decisions, summary = outputs(out)
        by_id = {d["proposal"]["id"]: (d["verdict"], d["status"]) for d in decisions}
        assert by_id.pop("fine") == ("allow", "ok"), by_id
        assert set(by_id.values()) == {("veto", "invalid_input")}
        assert len(by_id) == len(items) - 2
        one_line_reasons(summary)


@pytest.mark.parametrize("tail", [
    bytes([0x06]) + (2**62).to_bytes(8, "little") + b"junk" * 10,  # a chunk "of 4 EiB"
    bytes([0x07]) + (2**63).to_bytes(8, "little") + b"junk",  # an index record, same
    bytes([0x03]) + (2**40).to_bytes(8, "little") + b"\x00" * 40,  # a schema of 1 TiB
    b"\xff" * 64,  # no record at all
], ids=["chunk", "index", "schema", "noise"])
def test_mcap_with_garbage_after_its_magic(tmp_path, tail, capsys):
    bag = tmp_path / "garbage.mcap"
    bag.write_bytes(b"\x89MCAP0\r\n" + tail)
    rc = cli(bag, tmp_path / "out")
    decisions, summary = outputs(tmp_path / "out")
    assert decisions == [] and summary["damaged"]["by_kind"] == {"truncated": 1}
    one_line_reasons(summary)
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "truncated 1" in err
    # the reason itself is on the terminal, not only in summary.json
    detail = summary["damaged"]["items"][0]["detail"]
    assert f"truncated: {detail}" in err


def test_mcap_chunk_that_inflates_beyond_its_declared_size(tmp_path):
    """A chunk whose compressed data inflates to more than its header declares stops at the
    declared size instead of filling memory."""
    zstandard = pytest.importorskip("zstandard")
    from guard.replay.mcapscan import McapTruncated, _decompress

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20))
    assert len(_decompress("zstd", bomb, 1000)) == 1000
    lz4 = pytest.importorskip("lz4.frame")
    assert len(_decompress("lz4", lz4.compress(b"\x00" * (8 << 20)), 1000)) == 1000
    with pytest.raises(McapTruncated):
        _decompress("brotli", b"", 10)


@pytest.mark.parametrize("compression, module", [("zstd", "zstandard"), ("lz4", "lz4.frame")])
def test_a_missing_decompressor_names_the_replay_extra(
        compression: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A compressed chunk read without its codec: the error says what to install, not a raw
    # ImportError from inside the scanner.
    from guard.errors import MissingExtraError
    from guard.replay.mcapscan import _decompress

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=r"embodied-guard\[replay\]"):
        _decompress(compression, b"\x00" * 16, 16)


def test_a_frame_whose_header_stamp_is_not_a_ros_time_is_aged_in_bag_time(config, tmp_path):
    """nanosec 3e9 (rclpy and the bag readers do not enforce the range) read as time would put
    the frame 3 s later than it is; replay keeps bag time for it and says why."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    bad = types["sensor_msgs/msg/Image"](
        header=types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=int(T0), nanosec=3_000_000_000),
            frame_id="camera"),
        height=2, width=2, encoding="rgb8", is_bigendian=0, step=6,
        data=np.full(12, 90, np.uint8))
    raw = store.serialize_cdr(bad, "sensor_msgs/msg/Image")
    items: list[BagFrame | BagProposal | BagRaw] = [
        BagRaw(T0, "/camera/image_raw", "sensor_msgs/msg/Image", raw),
        BagProposal(T0 + 0.1, {"id": "p", "name": "move"}),
    ]
    bag = write_bag(tmp_path / "stamp.mcap", items, bare=True)
    with Guard(config, backend=ScriptedBackend()) as guard:
        replay(bag, tmp_path / "out", guard=guard, progress=False)
    decisions, summary = outputs(tmp_path / "out")
    assert [d["status"] for d in decisions] == ["ok"]
    assert decisions[0]["frame_stamp"] == pytest.approx(T0)  # bag time, not T0 + 3 s
    assert any("not a valid ROS time" in n and "bag time" in n for n in summary["notes"])
