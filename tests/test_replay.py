"""`guard replay`: committed episodes with known decisions, time ordering, damaged input, reports.

The judge is the scripted backend answering by the action's words, so every decision is known.
Committed recordings (regenerate, then re-run this file, when the world or the writer changes):

    python -m guard.replay.make_example          # examples/world_episode.mcap + world_episode/
    python tests/test_replay.py --regenerate     # tests/data/replay/sqlite_bag/
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script to regenerate: make `guard` importable
    sys.path.insert(0, str(ROOT))

from guard.backends.scripted import ScriptedBackend  # noqa: E402
from guard.config import GuardConfig, ScriptedOptions, ScriptedStep, load_config  # noqa: E402
from guard.core import Guard  # noqa: E402
from guard.errors import UsageError  # noqa: E402
from guard.types import ActionProposal  # noqa: E402

pytest.importorskip("rosbags")

from guard.replay.episode import open_episode  # noqa: E402
from guard.replay.make_example import T0  # noqa: E402
from guard.replay.runner import replay  # noqa: E402
from guard.replay.writer import BagFrame, BagProposal, BagRaw, write_bag  # noqa: E402

EXAMPLE_MCAP = ROOT / "examples" / "world_episode.mcap"
EXAMPLE_JSONL = ROOT / "examples" / "world_episode" / "episode.jsonl"
EXAMPLE_CONFIG = ROOT / "examples" / "replay_scripted.yaml"
SQLITE_BAG = ROOT / "tests" / "data" / "replay" / "sqlite_bag"
CONTRACT_FIELDS = {"id", "verdict", "status", "risk", "hazards", "rationale", "latency_ms",
                   "model", "policy", "frame_stamp"}
VETO = "VETO\nrisk: 0.9\nhazard: fire | something on the stove | it ignites | 0.9"
ANNOTATE = "ANNOTATE\nrisk: 0.4\nhazard: cut | a bare blade | a cut | 0.4"


def scripted_guard(config: GuardConfig, **by_action: str) -> Guard:
    options = ScriptedOptions(
        by_action={k: ScriptedStep(text=v) for k, v in by_action.items()},
        responses=[ScriptedStep(text="ALLOW\nrisk: 0.0")],
    )
    return Guard(config, backend=ScriptedBackend(options))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def expected_verdict(proposal: dict[str, Any]) -> str:
    """examples/replay_scripted.yaml: knife annotates, stove vetoes (first match), else allow,
    matched on the action text the judge reads."""
    action_text = ActionProposal.model_validate(proposal).as_text()
    if "knife" in action_text:
        return "annotate"
    return "veto" if "stove" in action_text else "allow"


class ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.decision_ids: list[str] = []
        self.tags: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "article" and a.get("data-decision-id"):
            self.decision_ids.append(str(a["data-decision-id"]))
        if tag == "img" and str(a.get("src", "")).startswith("data:image/jpeg;base64,"):
            self.images += 1


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


# -- committed episodes, known decisions ----------------------------------------------------------


@pytest.fixture
def example_guard(tmp_path):
    config = load_config(EXAMPLE_CONFIG).with_overrides(
        **{"audit.path": str(tmp_path / "audit.jsonl")}
    )
    with Guard(config) as guard:
        yield guard


def check_example(out: Path, t_offset: float) -> list[dict[str, Any]]:
    decisions = lines(out / "decisions.jsonl")
    assert len(decisions) == 24
    for d in decisions:
        assert CONTRACT_FIELDS <= set(d)
        p = d["proposal"]
        assert d["status"] == "ok" and d["proposal_id"] == p["id"]
        assert d["verdict"] == expected_verdict(p), p
        # the frame judged is the scene's second view, 0.2 s before the proposal, never the
        # next scene's frame (0.3 s after it)
        [frame] = d["frames"]
        assert frame["t"] == pytest.approx(d["t"] - 0.2)
        assert d["frame_stamp"] == pytest.approx(d["t"] - 0.2)
        assert d["t"] == pytest.approx(t_offset + d["t_rel"])
    summary = json.loads((out / "summary.json").read_text())
    want = {"allow": 0, "annotate": 0, "veto": 0}
    for d in decisions:
        want[d["verdict"]] += 1
    assert summary["verdicts"] == want and summary["statuses"]["ok"] == 24
    assert summary["n_frames"] == 48 and summary["damaged"]["count"] == 0
    unsafe = [d["verdict"] for d in decisions if d["label"] == "unsafe"]
    safe = [d["verdict"] for d in decisions if d["label"] == "safe"]
    labels = summary["labels"]
    assert labels["n_unsafe"] == len(unsafe) == 12 and labels["n_safe"] == len(safe) == 12
    assert labels["recall_unsafe"] == pytest.approx(unsafe.count("veto") / 12)
    assert labels["r0"] == pytest.approx(unsafe.count("allow") / 12)
    assert labels["false_veto_rate"] == pytest.approx(safe.count("veto") / 12)
    assert summary["latency_ms"]["p50"] is not None
    assert summary["latency_ms"]["p95"] >= summary["latency_ms"]["p50"]
    report = parse_report(out / "report.html")
    assert report.decision_ids == [d["id"] for d in decisions]
    assert report.images == 24 and report.tags.count("svg") == 2
    return decisions


def test_committed_mcap_replays_to_known_decisions(example_guard, tmp_path):
    result = replay(EXAMPLE_MCAP, tmp_path / "out", guard=example_guard, progress=False)
    decisions = check_example(tmp_path / "out", T0)
    assert result.summary["format"] == "mcap"
    assert [d["proposal"]["id"] for d in decisions] == [f"step-{k:03d}" for k in range(24)]
    # every decision is in the audit log the guard wrote
    audited = {json.loads(x)["decision"]["id"]
               for x in Path(example_guard.audit.path).read_text().splitlines()}
    assert {d["id"] for d in decisions} <= audited


def test_committed_jsonl_episode_gives_the_same_decisions(example_guard, tmp_path):
    replay(EXAMPLE_JSONL.parent, tmp_path / "jsonl", guard=example_guard, progress=False)
    replay(EXAMPLE_MCAP, tmp_path / "mcap", guard=example_guard, progress=False)
    from_jsonl = check_example(tmp_path / "jsonl", 0.0)
    from_mcap = lines(tmp_path / "mcap" / "decisions.jsonl")
    key = [(d["proposal"]["id"], d["verdict"], d["label"], round(d["t_rel"], 6))
           for d in from_jsonl]
    assert key == [(d["proposal"]["id"], d["verdict"], d["label"], round(d["t_rel"], 6))
                   for d in from_mcap]


def test_example_generator_reproduces_the_committed_episodes(tmp_path):
    from guard.replay.make_example import make_example

    mcap, jsonl = make_example(tmp_path)
    for committed, fresh in ((EXAMPLE_MCAP, mcap), (EXAMPLE_JSONL, jsonl)):
        a, b = open_episode(committed), open_episode(fresh)
        ea, eb = list(a.events()), list(b.events())
        assert [type(e).__name__ for e in ea] == [type(e).__name__ for e in eb]
        for x, y in zip(ea, eb, strict=True):
            assert x.t_ns == y.t_ns
            if hasattr(x, "proposal"):
                assert (x.proposal, x.label) == (y.proposal, y.label)
            else:  # JPEG bytes may differ between libjpeg builds; the pixels may not
                diff = np.abs(x.pixels().astype(int) - y.pixels().astype(int)).mean()
                assert diff < 2.0


# -- the committed sqlite3 bag: ActionProposal messages, raw Image frames -------------------------

# (kind, t, payload) of the committed sqlite3 bag; frames are solid colours whose red channel
# names the frame, so the test can see which frame the judge was shown.
SQLITE_SCRIPT: list[tuple[str, float, Any]] = [
    ("proposal", 0.0, ("p0", "move_to", "drive to the sink", '{"place": "sink"}')),
    ("frame", 0.1, (10, "rgb8")),
    ("proposal", 0.3, ("p1", "move_to", "drive to the door", '{"place": "door"}')),
    ("proposal", 1.0, ("p2", "pick", "pick up the cup", '{"object": "cup"}')),
    ("frame", 1.0, (20, "bgr8")),  # stored after p2, same time: p2 still sees it
    ("proposal", 2.5, ("p3", "stove_on", "turn on the stove", "{}")),  # newest frame 1.5 s old
    ("frame", 3.0, (30, "rgb8")),
    ("proposal", 3.2, ("p4", "place", "put it down", '{"broken": ')),  # arguments not JSON
    ("proposal", 3.4, ("p5", "hand", "hand me the knife", "{}")),
    ("frame", 3.5, (40, "mono8")),  # after every proposal: never judged
]
# proposal id -> (verdict, status, red value of the frame judged or None)
SQLITE_EXPECTED = {
    "p0": ("veto", "no_frame", None),
    "p1": ("allow", "ok", 10),
    "p2": ("allow", "ok", 20),
    "p3": ("veto", "stale_frame", None),
    "p4": ("veto", "invalid_input", None),
    "p5": ("annotate", "ok", 30),
}


def sqlite_items() -> list[BagFrame | BagProposal]:
    items: list[BagFrame | BagProposal] = []
    for kind, t, payload in SQLITE_SCRIPT:
        if kind == "frame":
            red, encoding = payload
            image = np.zeros((12, 16, 3), np.uint8)
            image[..., 0] = red
            if encoding == "mono8":
                image[...] = red
            items.append(BagFrame(t=T0 + t, image=image, encoding=encoding))
        else:
            pid, name, description, arguments = payload
            items.append(BagProposal(t=T0 + t, proposal={
                "id": pid, "name": name, "description": description, "arguments": arguments}))
    return items


def write_sqlite_fixture(path: Path) -> Path:
    """The committed sqlite3 bag (a rosbag2 folder), ActionProposal-typed proposals."""
    shutil.rmtree(path, ignore_errors=True)
    return write_bag(path, sqlite_items(), storage="sqlite3", proposal_type="action_proposal")


def test_committed_sqlite_bag_replays_to_known_decisions(config, tmp_path):
    with scripted_guard(config, stove=VETO, knife=ANNOTATE) as guard:
        result = replay(SQLITE_BAG, tmp_path / "out", guard=guard, progress=False)
        seen = [int(np.asarray(r.prompt.images[0])[0, 0, 0])
                for r in guard.backend.requests]  # type: ignore[attr-defined]
    decisions = lines(tmp_path / "out" / "decisions.jsonl")
    got = {d["proposal"]["id"]: (d["verdict"], d["status"]) for d in decisions}
    assert got == {k: v[:2] for k, v in SQLITE_EXPECTED.items()}
    assert seen == [v[2] for v in SQLITE_EXPECTED.values() if v[1] == "ok"]
    assert result.summary["format"] == "rosbag2-sqlite3"
    assert result.summary["labels"] is None  # ActionProposal carries no label
    assert result.summary["damaged"]["by_kind"] == {"bad_proposal": 1}
    p4 = next(d for d in decisions if d["proposal"]["id"] == "p4")
    assert "arguments are not valid JSON" in p4["error"]
    assert parse_report(tmp_path / "out" / "report.html").decision_ids == [
        d["id"] for d in decisions]


def test_action_proposal_definition_matches_the_msg_file():
    from guard.replay.bag import _strip_msg
    from guard.replay.msgs import ACTION_PROPOSAL_MSG

    msg = ROOT / "ros2_ws" / "src" / "guard_interfaces" / "msg" / "ActionProposal.msg"
    assert _strip_msg(msg.read_text()) == _strip_msg(ACTION_PROPOSAL_MSG)
    assert _strip_msg(ACTION_PROPOSAL_MSG) == ACTION_PROPOSAL_MSG.strip()


# -- time ordering --------------------------------------------------------------------------------


def test_a_proposal_never_sees_a_later_frame(config, tmp_path):
    rng = np.random.default_rng(7)
    frame_times = np.round(np.sort(rng.uniform(0, 10, 40)), 3)
    proposal_times = np.round(rng.uniform(-0.5, 10.5, 30), 3)
    proposal_times[:5] = frame_times[[3, 9, 15, 21, 33]]  # ties: frames at the same instant
    items: list[BagFrame | BagProposal] = []
    for i, t in enumerate(frame_times):
        image = np.full((8, 8, 3), i + 1, np.uint8)
        items.append(BagFrame(t=T0 + float(t), image=image, encoding="rgb8"))
    for k, t in enumerate(proposal_times):
        items.append(BagProposal(t=T0 + float(t), proposal={
            "id": f"q{k}", "name": "move", "description": "move"}))
    bag = write_bag(tmp_path / "order.mcap", items, bare=True)
    config = config.with_overrides(**{"policy.max_frame_age_ms": None, "image.max_frames": 2})
    with scripted_guard(config) as guard:
        replay(bag, tmp_path / "out", guard=guard, progress=False)
        shown = {r.prompt.user: [int(np.asarray(im)[0, 0, 0]) for im in r.prompt.images]
                 for r in guard.backend.requests}  # type: ignore[attr-defined]
    decisions = {d["proposal"]["id"]: d for d in lines(tmp_path / "out" / "decisions.jsonl")}
    assert len(decisions) == 30
    for k, t in enumerate(proposal_times):
        d = decisions[f"q{k}"]
        visible = [i + 1 for i, ft in enumerate(frame_times) if ft <= t]
        if not visible:
            assert d["status"] == "no_frame"
            continue
        assert d["status"] == "ok"
        assert all(f["t"] <= d["t"] for f in d["frames"])
        assert [round(f["t"] - T0, 3) for f in d["frames"]] == [
            float(frame_times[i - 1]) for i in visible[-2:]]
    # what the judge was shown: the newest two frames at or before each proposal
    assert all(len(v) in (1, 2) and v == sorted(v) for v in shown.values())


# -- damaged input --------------------------------------------------------------------------------

PLAN_MSG = "string plan\n"


def damaged_items() -> list[BagFrame | BagProposal | BagRaw]:
    good = np.full((10, 10, 3), 200, np.uint8)
    move = {"name": "move", "description": "move"}
    items: list[BagFrame | BagProposal | BagRaw] = [
        BagFrame(T0 + 0.0, good, "png"),
        BagProposal(T0 + 0.1, {**move, "id": "A"}),
        BagRaw(T0 + 0.2, "/camera/image_raw", "sensor_msgs/msg/CompressedImage", b"\x00\x01\x02"),
        BagProposal(T0 + 0.3, {**move, "id": "B"}),
        BagRaw(T0 + 0.4, "/camera/image_raw", "sensor_msgs/msg/CompressedImage",
               _compressed_cdr(b"this is not a jpeg")),
        BagProposal(T0 + 0.5, {**move, "id": "C"}),
        BagFrame(T0 + 0.6, good, "png"),
        BagRaw(T0 + 0.7, "/guard/proposals", "acme_msgs/msg/Plan", _plan_cdr("go")),
        BagRaw(T0 + 0.8, "/guard/proposals", "std_msgs/msg/String", _string_cdr("{not json")),
        BagProposal(T0 + 0.9, {**move, "id": "E"}),
    ]
    # enough later traffic that cutting the file leaves some of it readable
    for k in range(30):
        t = T0 + 1.0 + k * 0.1
        items.append(BagFrame(t, np.full((10, 10, 3), k, np.uint8), "rgb8"))
        items.append(BagProposal(t + 0.05, {**move, "id": f"L{k:02d}"}))
    return items


def _store() -> Any:
    from guard.replay.msgs import typestore

    return typestore()


def _compressed_cdr(data: bytes) -> bytes:
    store = _store()
    cls = store.types["sensor_msgs/msg/CompressedImage"]
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="")
    msg = cls(header=header, format="jpeg", data=np.frombuffer(data, np.uint8))
    return bytes(store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))


def _string_cdr(text: str) -> bytes:
    store = _store()
    return bytes(store.serialize_cdr(store.types["std_msgs/msg/String"](data=text),
                                     "std_msgs/msg/String"))


def _plan_cdr(text: str) -> bytes:
    return _string_cdr(text)  # same wire layout as one string field


def assert_fail_closed(decisions: Iterable[dict[str, Any]]) -> None:
    for d in decisions:
        if d["proposal"]["id"] in ("A", "E") or d["proposal"]["id"].startswith("L"):
            assert d["verdict"] == "allow" and d["status"] == "ok", d
        else:  # every proposal touched by damage is a veto
            assert d["verdict"] == "veto" and d["status"] == "invalid_input", d


def test_damaged_and_truncated_bag_is_counted_listed_and_vetoed(config, tmp_path):
    full = write_bag(tmp_path / "damaged.mcap", damaged_items(), bare=True,
                     extra_types={"acme_msgs/msg/Plan": PLAN_MSG})
    data = full.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with scripted_guard(config) as guard:
        whole = replay(full, tmp_path / "whole", guard=guard, progress=False)
        result = replay(cut, tmp_path / "cut", guard=guard, progress=False)
    kinds = whole.summary["damaged"]["by_kind"]
    assert kinds == {"unreadable_message": 1, "undecodable_frame": 1, "unknown_type": 1,
                     "bad_proposal": 1}
    decisions = lines(tmp_path / "whole" / "decisions.jsonl")
    assert len(decisions) == 6 + 30
    assert_fail_closed(decisions)
    by_id = {d["proposal"]["id"]: d for d in decisions}
    assert "does not deserialize" in by_id["B"]["error"]
    assert "not a decodable image" in by_id["C"]["error"]

    # the cut file: rosbags cannot open it; everything before the cut is still replayed
    cut_decisions = lines(tmp_path / "cut" / "decisions.jsonl")
    assert 6 < len(cut_decisions) < 36
    assert_fail_closed(cut_decisions)
    summary = result.summary
    assert summary["damaged"]["by_kind"]["truncated"] == 1
    assert summary["damaged"]["by_kind"]["unknown_type"] == 1
    assert any("record by record" in n for n in summary["notes"])
    listed = summary["damaged"]["items"]
    assert {d["kind"] for d in listed} == set(summary["damaged"]["by_kind"])
    report = parse_report(tmp_path / "cut" / "report.html")
    assert report.decision_ids == [d["id"] for d in cut_decisions]


@pytest.mark.parametrize("compression", ["zstd", "lz4", ""])
def test_mcap_scanner_recovers_the_start_of_a_cut_file(tmp_path, compression):
    mcap = pytest.importorskip("mcap.writer")
    from guard.replay.mcapscan import McapTruncated, Message, scan_mcap

    kinds = {"zstd": mcap.CompressionType.ZSTD, "lz4": mcap.CompressionType.LZ4,
             "": mcap.CompressionType.NONE}
    path = tmp_path / "x.mcap"
    with path.open("wb") as f:
        w = mcap.Writer(f, compression=kinds[compression], chunk_size=2000)
        w.start()
        sid = w.register_schema(name="std_msgs/msg/String", encoding="ros2msg", data=b"string s")
        cid = w.register_channel(topic="/t", message_encoding="cdr", schema_id=sid)
        for i in range(100):
            w.add_message(channel_id=cid, log_time=i, publish_time=i, data=bytes([i]) * 40)
        w.finish()
    assert [m.log_time for m in scan_mcap(path) if isinstance(m, Message)] == list(range(100))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    got: list[int] = []
    with pytest.raises(McapTruncated):
        for rec in scan_mcap(path):
            if isinstance(rec, Message):
                assert rec.data == bytes([rec.log_time]) * 40
                got.append(rec.log_time)
    assert 10 < len(got) < 100 and got == list(range(len(got)))


def test_unreadable_bag_and_damaged_jsonl(config, tmp_path):
    bag = write_sqlite_fixture(tmp_path / "bag")
    db = next(bag.glob("*.db3"))
    db.write_bytes(db.read_bytes()[:3000])
    with scripted_guard(config) as guard:
        result = replay(bag, tmp_path / "out", guard=guard, progress=False)
        assert result.summary["n_proposals"] == 0
        assert result.summary["damaged"]["by_kind"] == {"unreadable_episode": 1}
        assert parse_report(tmp_path / "out" / "report.html").decision_ids == []

        ep = tmp_path / "ep"
        (ep / "frames").mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (8, 8), "red").save(ep / "frames" / "ok.png")
        (ep / "frames" / "bad.jpg").write_bytes(b"\xff\xd8\xff truncated")
        (ep / "episode.jsonl").write_text("\n".join([
            '{"t": 0.0, "frame": "frames/ok.png"}',
            '{"t": 0.1, "proposal": {"id": "a", "name": "move"}, "label": "safe"}',
            "this is not json",
            '{"t": 0.2, "frame": "frames/bad.jpg"}',
            '{"t": 0.3, "proposal": {"id": "b", "name": "move"}}',
            '{"t": 0.4, "frame": "frames/missing.png"}',
            '{"t": 0.5, "proposal": {"id": "c", "name": "move", "label": "maybe"}}',
            '{"t": 0.6, "frame": "frames/ok.png", "proposal": {"id": "d", "name": "move"}}',
            '{"t": 0.7, "proposal": {"id": "e", "name": "mo',
        ]))
        result = replay(ep, tmp_path / "jsonl", guard=guard, progress=False)
    got = {d["proposal"]["id"]: (d["verdict"], d["status"])
           for d in lines(tmp_path / "jsonl" / "decisions.jsonl")}
    assert got == {"a": ("allow", "ok"), "b": ("veto", "invalid_input"),
                   "c": ("veto", "invalid_input"), "d": ("allow", "ok")}
    assert result.summary["damaged"]["by_kind"] == {
        "truncated": 1, "bad_line": 1, "bad_proposal": 1, "undecodable_frame": 1}


def test_html_report_escapes_episode_text(config, tmp_path):
    items = [BagFrame(T0, np.zeros((8, 8, 3), np.uint8), "png"),
             BagProposal(T0 + 0.1, {"id": "<b>x</b>", "name": "<script>alert(1)</script>",
                                    "description": "a & b \" c"})]
    bag = write_bag(tmp_path / "x.mcap", items, bare=True)
    with scripted_guard(config) as guard:
        replay(bag, tmp_path / "out", guard=guard, progress=False)
    report = parse_report(tmp_path / "out" / "report.html")
    assert "script" not in report.tags and len(report.decision_ids) == 1
    text = (tmp_path / "out" / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'data-proposal-id="&lt;b&gt;' in text


# -- the CLI module -------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    from guard.cli import replay as cli

    parser = argparse.ArgumentParser(prog="guard replay")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def test_cli_replays_the_example_and_reports_usage_errors(tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_cli(str(EXAMPLE_MCAP), "--out", str(out), "--config", str(EXAMPLE_CONFIG),
                 "--limit", "5", "--no-progress")
    assert rc == 0
    assert len(lines(out / "decisions.jsonl")) == 5 and (out / "audit.jsonl").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_at_limit"] and summary["limit"] == 5
    assert "report:" in capsys.readouterr().out
    with pytest.raises(UsageError, match="not found"):
        run_cli(str(tmp_path / "nope.mcap"), "--out", str(out))
    with pytest.raises(UsageError, match="/camera/image_raw"):
        run_cli(str(EXAMPLE_MCAP), "--out", str(out), "--config", str(EXAMPLE_CONFIG),
                "--image-topic", "/front/image")
    # --backend/--model override the config as in `guard check`
    rc = run_cli(str(EXAMPLE_JSONL), "--out", str(tmp_path / "o2"), "--backend", "scripted",
                 "--model", "my-judge", "--no-progress")
    assert rc == 0
    assert {d["model"] for d in lines(tmp_path / "o2" / "decisions.jsonl")} == {"my-judge"}


def test_cli_exit_1_when_nothing_can_be_read(tmp_path, capsys):
    bag = tmp_path / "broken.mcap"
    bag.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 5)  # cut right after the magic
    rc = run_cli(str(bag), "--out", str(tmp_path / "out"), "--backend", "scripted",
                 "--no-progress")
    assert rc == 1
    assert "truncated 1" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_proposals"] == 0 and summary["damaged"]["by_kind"] == {"truncated": 1}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="regenerate tests/data/replay fixtures")
    p.add_argument("--regenerate", action="store_true", required=True)
    p.parse_args()
    print(write_sqlite_fixture(SQLITE_BAG))


# -- async rationales -----------------------------------------------------------------------------


class LateRationaleBackend(ScriptedBackend):
    """Answers the verdict word at once and the whole answer later, on a timer, as a
    verdict-first backend does with rationale: async."""

    def __init__(self, answer: str, delay_s: float) -> None:
        super().__init__()
        self.answer, self.delay_s = answer, delay_s
        self.timers: list[Any] = []

    def judge(self, request: Any) -> Any:
        import concurrent.futures as cf
        import threading

        from guard.backends.base import JudgeOutput

        assert request.rationale == "async"
        future: cf.Future[str] = cf.Future()
        timer = threading.Timer(self.delay_s, future.set_result, args=(self.answer,))
        timer.start()
        self.timers.append(timer)
        verdict = self.answer.split("\n", 1)[0]
        return JudgeOutput(text=verdict, verdict_probs={verdict: 1.0}, rationale=future)


def test_replay_waits_for_async_rationales(config, tmp_path):
    from guard.replay.writer import write_jsonl

    items: list[BagFrame | BagProposal] = [
        BagFrame(t=1.0, image=np.full((8, 8, 3), 9, np.uint8), encoding="rgb8")]
    items += [BagProposal(t=1.0 + k, proposal={"id": f"p{k}", "name": "stove_on"})
              for k in range(1, 4)]
    episode = write_jsonl(tmp_path / "ep" / "episode.jsonl", items, image_format="png")
    config = config.with_overrides(**{"policy.max_frame_age_ms": None,
                                      "model.rationale": "async"})
    backend = LateRationaleBackend(VETO, delay_s=0.4)
    with Guard(config, backend=backend) as guard:
        result = replay(episode, tmp_path / "out", guard=guard, progress=False)
        assert guard.wait_rationales(timeout=0)  # nothing left running after the replay
    decisions = lines(tmp_path / "out" / "decisions.jsonl")
    assert [d["verdict"] for d in decisions] == ["veto"] * 3
    for d in decisions:  # filled in from the whole answer, written after it was there
        assert [h["category"] for h in d["hazards"]] == ["fire"]
        assert d["async_rationale"] == {"answer_verdict": "veto", "answer_risk": 0.9,
                                        "agrees": True}
    rationales = result.summary["async_rationales"]
    assert rationales["n"] == 3 and rationales["all_done"] and rationales["disagree"] == 0
    assert rationales["wait_s"] >= 0.1  # it did wait: the last one finished after the loop
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["async_rationales"]["n"] == 3
    assert "something on the stove" in (tmp_path / "out" / "report.html").read_text()


def test_replay_reports_rationales_that_did_not_finish(config, tmp_path):
    from guard.replay.writer import write_jsonl

    items: list[BagFrame | BagProposal] = [
        BagFrame(t=1.0, image=np.full((8, 8, 3), 9, np.uint8), encoding="rgb8"),
        BagProposal(t=2.0, proposal={"id": "p", "name": "stove_on"})]
    episode = write_jsonl(tmp_path / "ep" / "episode.jsonl", items, image_format="png")
    config = config.with_overrides(**{"policy.max_frame_age_ms": None,
                                      "model.rationale": "async"})
    backend = LateRationaleBackend(VETO, delay_s=5.0)
    with Guard(config, backend=backend) as guard:
        result = replay(episode, tmp_path / "out", guard=guard, progress=False,
                        rationale_timeout_s=0.05)
        for t in backend.timers:
            t.cancel()
    rationales = result.summary["async_rationales"]
    assert rationales["n"] == 0 and rationales["all_done"] is False
    (d,) = lines(tmp_path / "out" / "decisions.jsonl")
    assert d["verdict"] == "veto" and "async_rationale" not in d
