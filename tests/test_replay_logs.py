"""`guard replay` reads real logs whole: rosbag2 folders as rosbag2 writes them, counts of
expected vs read messages, topics as the bag spells them, clear usage errors, honest exit codes.

Committed recordings in tests/data/replay/rosbag2_style/ reproduce what rosbag2 itself writes
(the layout of its own `talker` test bags, rosbag2_py/test/resources/{mcap,sqlite3}/talker):
metadata.yaml in rosbag2's format whose QoS text records an infinite deadline as `sec: 0,
nsec: 0`, while the storage file records it as `sec: 2147483647, nsec: 4294967295`. The data
are ours. Regenerate (then re-run this file) when the writer changes:

    python tests/test_replay_logs.py --regenerate
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script to regenerate: make `guard` importable
    sys.path.insert(0, str(ROOT))

from guard.cli.main import main  # noqa: E402

pytest.importorskip("rosbags")

from guard.replay.writer import BagFrame, BagProposal, write_bag  # noqa: E402

ROSBAG2_STYLE = ROOT / "tests" / "data" / "replay" / "rosbag2_style"
T0 = 1_700_000_100.0
# The QoS text rosbag2 writes into the storage file and into metadata.yaml for the same
# publisher (copied from its talker test bags): the durations differ.
_QOS = (
    "- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: {d}\n"
    "    nsec: {n}\n  lifespan:\n    sec: {d}\n    nsec: {n}\n  liveliness: 1\n"
    "  liveliness_lease_duration:\n    sec: {d}\n    nsec: {n}\n"
    "  avoid_ros_namespace_conventions: false"
)
STORAGE_QOS = _QOS.format(d=2147483647, n=4294967295)
METADATA_QOS = _QOS.format(d=0, n=0)
# (t, action, label) of the committed bags' proposals; a frame 0.2 s before each
SCRIPT = [
    (0.5, ("p0", "move_to", "drive to the sink"), "safe"),
    (1.0, ("p1", "stove_on", "turn on the stove"), "unsafe"),
    (1.5, ("p2", "pick", "pick up the cup"), "safe"),
    (2.0, ("p3", "hand", "hand me the knife"), "unsafe"),
    (2.5, ("p4", "open", "open the fridge"), "safe"),
    (3.0, ("p5", "stove_on", "turn on the stove again"), "unsafe"),
]
EXPECTED = {"p0": "allow", "p1": "veto", "p2": "allow", "p3": "annotate", "p4": "allow",
            "p5": "veto"}
SCRIPTED_CONFIG = """\
model:
  backend: scripted
  scripted:
    by_action:
      knife: {text: "ANNOTATE\\nrisk: 0.4\\nhazard: cut | a bare blade | a cut | 0.4"}
      stove: {text: "VETO\\nrisk: 0.9\\nhazard: fire | the stove | it ignites | 0.9"}
    responses:
      - text: "ALLOW\\nrisk: 0.0"
policy:
  max_frame_age_ms: 1000
"""


def items() -> list[BagFrame | BagProposal]:
    out: list[BagFrame | BagProposal] = []
    for k, (t, (pid, name, description), label) in enumerate(SCRIPT):
        out.append(BagFrame(T0 + t - 0.2, np.full((8, 8, 3), 10 * (k + 1), np.uint8), "rgb8"))
        out.append(BagProposal(T0 + t, {"id": pid, "name": name, "description": description,
                                        "label": label}))
    return out


def _metadata(storage: str, file_name: str, topics: list[tuple[str, str, int]],
              start_ns: int, duration_ns: int) -> str:
    """metadata.yaml in the two layouts of rosbag2's talker bags (sqlite3: as rosbag2's
    yaml-cpp emitter writes it; mcap: as its re-dumped copy reads), with our topics."""
    total = sum(n for _, _, n in topics)
    if storage == "mcap":
        import yaml

        info = {"rosbag2_bagfile_information": {
            "compression_format": "", "compression_mode": "",
            "duration": {"nanoseconds": duration_ns}, "message_count": total,
            "relative_file_paths": [file_name],
            "starting_time": {"nanoseconds_since_epoch": start_ns},
            "storage_identifier": "mcap",
            "topics_with_message_count": [
                {"message_count": n, "topic_metadata": {
                    "name": name, "offered_qos_profiles": METADATA_QOS,
                    "serialization_format": "cdr", "type": msgtype}}
                for name, msgtype, n in topics],
            "version": 4}}
        return str(yaml.safe_dump(info))
    qos = json.dumps(METADATA_QOS)  # a double-quoted YAML scalar on one line, as rosbag2's
    lines = [
        "rosbag2_bagfile_information:", "  version: 4", "  storage_identifier: sqlite3",
        "  relative_file_paths:", f"    - {file_name}", "  duration:",
        f"    nanoseconds: {duration_ns}", "  starting_time:",
        f"    nanoseconds_since_epoch: {start_ns}", f"  message_count: {total}",
        "  topics_with_message_count:",
    ]
    for name, msgtype, n in topics:
        lines += ["    - topic_metadata:", f"        name: {name}", f"        type: {msgtype}",
                  "        serialization_format: cdr", f"        offered_qos_profiles: {qos}",
                  f"      message_count: {n}"]
    lines += ['  compression_format: ""', '  compression_mode: ""']
    return "\n".join(lines) + "\n"


def write_rosbag2_style(path: Path, storage: str) -> Path:
    """A rosbag2 folder with our data and rosbag2's own metadata.yaml / storage QoS texts."""
    shutil.rmtree(path, ignore_errors=True)
    bag = write_bag(path, items(), storage=storage,  # type: ignore[arg-type]
                    offered_qos_profiles=STORAGE_QOS)
    [storage_file] = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    times = [round(i.t * 1e9) for i in items()]
    topics = [("/camera/image_raw", "sensor_msgs/msg/Image", len(SCRIPT)),
              ("/guard/proposals", "std_msgs/msg/String", len(SCRIPT))]
    (bag / "metadata.yaml").write_text(_metadata(
        storage, storage_file.name, topics, min(times), max(times) - min(times)))
    return bag


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture
def scripted_config(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.yaml"
    path.write_text(SCRIPTED_CONFIG)
    return path


def cli(episode: Path, out: Path, *extra: str) -> int:
    return main(["replay", str(episode), "--out", str(out), "--no-progress", *extra])


# -- rosbag2 folders as rosbag2 writes them ---------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_the_fixture_reproduces_rosbag2s_qos_mismatch(storage):
    """rosbags alone reads nothing from these folders: the committed bags keep the case the
    workaround in guard/replay/bag.py exists for (if this fails, rosbags pairs connections
    without QoS now and the workaround can go)."""
    from rosbags.rosbag2 import Reader

    with Reader(ROSBAG2_STYLE / storage) as reader:
        assert sum(c.msgcount for c in reader.connections) == 2 * len(SCRIPT)
        assert sum(1 for _ in reader.messages(connections=reader.connections)) == 0


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag2_folders_are_read_whole(storage, scripted_config, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli(ROSBAG2_STYLE / storage, out, "--config", str(scripted_config))
    decisions = lines(out / "decisions.jsonl")
    assert {d["proposal"]["id"]: d["verdict"] for d in decisions} == EXPECTED
    assert all(d["status"] == "ok" for d in decisions)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == f"rosbag2-{storage}" and summary["n_frames"] == len(SCRIPT)
    assert summary["damaged"]["count"] == 0
    assert rc == 0, capsys.readouterr().err


def test_regenerated_fixture_matches_the_committed_one(tmp_path):
    for storage in ("mcap", "sqlite3"):
        fresh = write_rosbag2_style(tmp_path / storage, storage)
        committed = ROSBAG2_STYLE / storage
        assert (fresh / "metadata.yaml").read_text() == (
            committed / "metadata.yaml").read_text()


# -- expected vs read, lost messages -----------------------------------------------------------


def test_summary_counts_expected_and_read_messages_per_topic(scripted_config, tmp_path, capsys):
    rc = cli(ROSBAG2_STYLE / "mcap", tmp_path / "out", "--config", str(scripted_config))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["messages"] == {"/camera/image_raw": {"expected": 6, "read": 6},
                                   "/guard/proposals": {"expected": 6, "read": 6}}
    assert summary["lost_messages"] == 0 and rc == 0
    assert "messages read: /camera/image_raw 6/6, /guard/proposals 6/6" in capsys.readouterr().out


def test_messages_the_index_counts_but_the_reader_never_returns_exit_1(
    scripted_config, tmp_path, capsys
):
    """The bag's own index says 8 proposals and 6 can be read (what silently happened with
    rosbag2's QoS text): every readable one is judged, the loss is reported, exit 1."""
    bag = tmp_path / "bag"
    shutil.copytree(ROSBAG2_STYLE / "sqlite3", bag)
    meta = (bag / "metadata.yaml").read_text()
    parts = meta.split("      message_count: 6")
    assert len(parts) == 3
    (bag / "metadata.yaml").write_text(
        parts[0] + "      message_count: 6" + parts[1] + "      message_count: 8" + parts[2])
    rc = cli(bag, tmp_path / "out", "--config", str(scripted_config))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["messages"]["/guard/proposals"] == {"expected": 8, "read": 6}
    assert summary["lost_messages"] == 2 and summary["n_proposals"] == 6
    assert rc == 1
    assert "2 messages the index counts were never read" in capsys.readouterr().err


def test_limit_is_not_a_loss(scripted_config, tmp_path):
    rc = cli(ROSBAG2_STYLE / "mcap", tmp_path / "out", "--config", str(scripted_config),
             "--limit", "2")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_proposals"] == 2 and summary["lost_messages"] is None and rc == 0


# -- topics as the bag spells them --------------------------------------------------------------


def test_topics_match_with_or_without_the_leading_slash(scripted_config, tmp_path):
    plain = ROSBAG2_STYLE / "mcap"
    slashless = write_bag(tmp_path / "slashless.mcap", items(), bare=True,
                          image_topic="camera/image_raw", proposal_topic="guard/proposals")
    for k, (bag, extra) in enumerate([
        (plain, ["--proposal-topic", "guard/proposals", "--image-topic", "camera/image_raw"]),
        (slashless, []),  # the defaults find the bag's own spelling
        (slashless, ["--proposal-topic", "/guard/proposals"]),
        (slashless, ["--proposal-topic", "guard/proposals"]),
    ]):
        out = tmp_path / f"out{k}"
        assert cli(bag, out, "--config", str(scripted_config), *extra) == 0
        decisions = lines(out / "decisions.jsonl")
        assert {d["proposal"]["id"]: d["verdict"] for d in decisions} == EXPECTED, extra
        assert all(d["status"] == "ok" for d in decisions)
        summary = json.loads((out / "summary.json").read_text())
        spelled = "/guard/proposals" if bag == plain else "guard/proposals"
        assert summary["proposal_topic"] == spelled


# -- usage errors on every path ------------------------------------------------------------------


def _frames_only(path: Path, *, proposal_channel: bool) -> Path:
    """An MCAP with frames and, optionally, an empty proposal channel."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from guard.replay.msgs import typestore
    from guard.replay.writer import _frame_msg

    store = typestore()
    target = path.parent / (path.stem + "-dir")
    with Writer(target, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image",
                                     typestore=store)
        if proposal_channel:
            writer.add_connection("/guard/proposals", "std_msgs/msg/String", typestore=store)
        for item in items():
            if isinstance(item, BagFrame):
                msgtype, msg = _frame_msg(store, item, 90)
                writer.write(conn, round(item.t * 1e9), store.serialize_cdr(msg, msgtype))
    return target


def _without_summary(mcap_file: Path, out: Path) -> Path:
    """The MCAP cut right after its DataEnd record: every message is there, but no summary
    or footer, so rosbags cannot open it and replay reads it record by record."""
    data = mcap_file.read_bytes()
    from guard.replay.mcapscan import OP_DATA_END

    pos = 8
    while data[pos] != OP_DATA_END:
        pos += 9 + int.from_bytes(data[pos + 1 : pos + 9], "little")
    end = pos + 9 + int.from_bytes(data[pos + 1 : pos + 9], "little")
    out.write_bytes(data[:end])
    return out


@pytest.mark.parametrize("proposal_channel", [False, True], ids=["no-channel", "empty-channel"])
def test_an_episode_without_proposals_is_a_usage_error(
    proposal_channel, scripted_config, tmp_path, capsys
):
    folder = _frames_only(tmp_path / "frames", proposal_channel=proposal_channel)
    [mcap_file] = folder.glob("*.mcap")
    fallback = _without_summary(mcap_file, tmp_path / "nosummary.mcap")
    jsonl = tmp_path / "frames.jsonl"
    jsonl.write_text('{"t": 1.0, "frame": "f.png"}\n')
    for episode in (folder, mcap_file, fallback, jsonl):
        capsys.readouterr()
        rc = cli(episode, tmp_path / "out", "--config", str(scripted_config))
        err = capsys.readouterr().err
        assert rc == 2, (episode, err)
        assert err.count("\n") == 1 and "error:" in err and "proposal" in err, err
    assert not (tmp_path / "out" / "decisions.jsonl").exists()


def test_the_fallback_path_still_reads_a_summaryless_mcap(scripted_config, tmp_path):
    bare = write_bag(tmp_path / "bare.mcap", items(), bare=True)
    fallback = _without_summary(bare, tmp_path / "nosummary.mcap")
    rc = cli(fallback, tmp_path / "out", "--config", str(scripted_config))
    decisions = lines(tmp_path / "out" / "decisions.jsonl")
    assert {d["proposal"]["id"]: d["verdict"] for d in decisions} == EXPECTED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["messages"]["/guard/proposals"] == {"expected": None, "read": 6}
    assert rc == 0


@pytest.mark.parametrize("flag,topic", [
    ("--proposal-topic", "/camera/image_raw"),
    ("--proposal-topic", "camera/image_raw"),
    ("--image-topic", "/guard/proposals"),
])
def test_a_topic_of_the_wrong_type_is_a_usage_error(flag, topic, scripted_config, tmp_path,
                                                   capsys):
    bare = write_bag(tmp_path / "bare.mcap", items(), bare=True)
    fallback = _without_summary(bare, tmp_path / "nosummary.mcap")
    for episode in (ROSBAG2_STYLE / "sqlite3", bare, fallback):
        capsys.readouterr()
        rc = cli(episode, tmp_path / "out", "--config", str(scripted_config), flag, topic)
        err = capsys.readouterr().err
        assert rc == 2, (episode, err)
        assert err.count("\n") == 1 and " holds " in err and "not " in err, err
    assert not (tmp_path / "out" / "decisions.jsonl").exists()


# -- layouts other writers produce ---------------------------------------------------------------


def _rewritten_mcap(source: Path, out: Path, **options: Any) -> Path:
    """`source`'s schemas, channels and messages written again by the mcap library's writer
    with `options` (its conformance-test switches: repeat_channels, repeat_schemas, ...)."""
    from mcap.reader import make_reader
    from mcap.writer import Writer

    with source.open("rb") as fh:
        records = list(make_reader(fh).iter_messages(log_time_order=False))
    with out.open("wb") as fh:
        writer = Writer(fh, **options)
        writer.start("ros2", "test")
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        for schema, channel, message in records:
            assert schema is not None
            if schema.id not in schemas:
                schemas[schema.id] = writer.register_schema(schema.name, schema.encoding,
                                                            schema.data)
            if channel.id not in channels:
                channels[channel.id] = writer.register_channel(
                    channel.topic, channel.message_encoding, schemas[schema.id], channel.metadata)
            writer.add_message(channels[channel.id], message.log_time, message.data,
                               message.publish_time, message.sequence)
        writer.finish()
    return out


@pytest.mark.parametrize("left_out", ["channels", "schemas"])
def test_an_mcap_whose_summary_leaves_channels_or_schemas_out_is_read_whole(
    left_out, scripted_config, tmp_path
):
    """The MCAP spec lets a writer not repeat channels or schemas in the summary (the
    foxglove/mcap conformance files tests/conformance/data/TenMessages/TenMessages-ch-rsh-st
    and -ch-rch-st); rosbags then saw no topics (a usage error) or topics without a type."""
    bare = write_bag(tmp_path / "bare.mcap", items(), bare=True)
    episode = _rewritten_mcap(bare, tmp_path / "partial-summary.mcap",
                              repeat_channels=left_out != "channels",
                              repeat_schemas=left_out != "schemas")
    rc = cli(episode, tmp_path / "out", "--config", str(scripted_config))
    decisions = lines(tmp_path / "out" / "decisions.jsonl")
    assert {d["proposal"]["id"]: d["verdict"] for d in decisions} == EXPECTED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {t: c["read"] for t, c in summary["messages"].items()} == {
        "/camera/image_raw": 6, "/guard/proposals": 6}
    assert f"its summary leaves {left_out} out" in " ".join(summary["notes"])
    assert rc == 0


def _split_without_metadata(folder: Path, tmp_path: Path, *, compress: bool = False) -> Path:
    """Our episode as rosbag2 leaves a split sqlite3 recording whose recorder did not end
    cleanly: ep_0.db3, ep_1.db3 and no metadata.yaml (the layout of rosbag2's
    rosbag2_tests/resources/reindex_test_bags/multiple_files; with `compress`, of
    .../message_compression: each message's data a zstd frame)."""
    import sqlite3

    import zstandard

    folder.mkdir()
    everything = items()
    for k, part in enumerate((everything[:6], everything[6:])):
        bag = write_bag(tmp_path / f"part{k}", part, storage="sqlite3")
        [db3] = bag.glob("*.db3")
        target = folder / f"ep_{k}.db3"
        shutil.copy(db3, target)
        if compress:
            con = sqlite3.connect(target)
            for row_id, data in con.execute("SELECT id, data FROM messages").fetchall():
                con.execute("UPDATE messages SET data = ? WHERE id = ?",
                            (zstandard.ZstdCompressor().compress(data), row_id))
            con.commit()
            con.close()
    return folder


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "message-compressed"])
def test_a_split_sqlite3_folder_without_metadata_is_read_file_by_file(
    compress, scripted_config, tmp_path, capsys
):
    """Before: the whole episode was 'unreadable' (rosbags needs metadata.yaml), exit 1; a
    bare message-compressed .db3 read every message as undeserializable, exit 0."""
    folder = _split_without_metadata(tmp_path / "ep", tmp_path, compress=compress)
    rc = cli(folder, tmp_path / "out", "--config", str(scripted_config))
    decisions = lines(tmp_path / "out" / "decisions.jsonl")
    assert {d["proposal"]["id"]: d["verdict"] for d in decisions} == EXPECTED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["messages"] == {"/camera/image_raw": {"expected": 6, "read": 6},
                                   "/guard/proposals": {"expected": 6, "read": 6}}
    assert summary["damaged"]["count"] == 0 and rc == 0
    assert "no metadata.yaml: read its 2 storage files one by one" in capsys.readouterr().err
    if compress:  # one file alone, as a bare .db3, too
        assert cli(folder / "ep_1.db3", tmp_path / "one", "--config", str(scripted_config)) == 0
        assert [d["status"] for d in lines(tmp_path / "one" / "decisions.jsonl")] == ["ok"] * 3


def test_a_version_1_metadata_layout_is_read_from_its_storage_file(scripted_config, tmp_path):
    """rosbag2's first metadata layout (rosbag2_tests/resources/test/metadata.yaml, 2018)
    lists topics under `topic_and_type`; rosbags refused the folder (a KeyError), so the
    episode was unreadable."""
    bag = tmp_path / "v1"
    shutil.copytree(ROSBAG2_STYLE / "sqlite3", bag)
    [db3] = bag.glob("*.db3")
    (bag / "metadata.yaml").write_text(
        "rosbag2_bagfile_information:\n  version: 1\n  storage_identifier: sqlite3\n"
        f"  relative_file_paths:\n    - {db3.name}\n  duration:\n    nanoseconds: 1\n"
        "  starting_time:\n    nanoseconds_since_epoch: 1\n  message_count: 12\n"
        "  topics_with_message_count:\n"
        + "".join(
            f"    - topic_and_type:\n        name: {name}\n        type: {msgtype}\n"
            "        serialization_format: cdr\n      message_count: 6\n"
            for name, msgtype in (("/camera/image_raw", "sensor_msgs/msg/Image"),
                                  ("/guard/proposals", "std_msgs/msg/String"))))
    rc = cli(bag, tmp_path / "out", "--config", str(scripted_config))
    decisions = lines(tmp_path / "out" / "decisions.jsonl")
    assert {d["proposal"]["id"]: d["verdict"] for d in decisions} == EXPECTED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "metadata.yaml version 1 lists topics as topic_and_type" in summary["notes"][0]
    assert rc == 0


@pytest.mark.parametrize("name,head,hint", [
    ("test_bag.bag", b"#ROSBAG V2.0\n", "a ROS 1 bag: convert it first"),
    ("file_compression_0.db3.zstd", b"\x28\xb5\x2f\xfd", "replay the rosbag2 folder"),
], ids=["ros1-bag", "file-compressed"])
def test_files_rosbag2_ships_that_are_not_episodes_say_what_they_are(
    name, head, hint, scripted_config, tmp_path, capsys
):
    """rosbag2's test resources hold ROS 1 bags (rosbag2_tests/resources/test_bag.bag) and
    file-compressed storage (reindex_test_bags/file_compression/*.db3.zstd): one usage line
    that says what to do with them."""
    episode = tmp_path / name
    episode.write_bytes(head)
    assert cli(episode, tmp_path / "out", "--config", str(scripted_config)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and hint in err, err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_split_bag_missing_one_of_its_files_reads_the_rest_and_reports_the_loss(
    storage, scripted_config, tmp_path, capsys
):
    """rosbag2's split bags (rosbag2_py/test/resources/{mcap,sqlite3}/wbag: wbag_0..4 and a
    metadata.yaml listing them) copied without one file. Before: the sqlite3 bag was
    unreadable as a whole (exit 1, nothing judged) and the MCAP one was scanned file by file
    without an index: 3 of 6 proposals judged, exit 0, the loss silent."""
    import yaml

    bag = tmp_path / "split"
    bag.mkdir()
    everything = items()
    suffix = ".mcap" if storage == "mcap" else ".db3"
    for k, part in enumerate((everything[:6], everything[6:])):
        [file] = write_bag(tmp_path / f"part{k}", part, storage=storage).glob(f"*{suffix}")
        shutil.copy(file, bag / f"split_{k}{suffix}")
    (bag / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": {
        "version": 5, "storage_identifier": storage,
        "relative_file_paths": [f"split_0{suffix}", f"split_1{suffix}"],
        "duration": {"nanoseconds": 3_000_000_000},
        "starting_time": {"nanoseconds_since_epoch": round(T0 * 1e9)}, "message_count": 12,
        "topics_with_message_count": [
            {"message_count": 6, "topic_metadata": {
                "name": name, "type": msgtype, "serialization_format": "cdr",
                "offered_qos_profiles": ""}}
            for name, msgtype in (("/camera/image_raw", "sensor_msgs/msg/Image"),
                                  ("/guard/proposals", "std_msgs/msg/String"))],
        "compression_format": "", "compression_mode": ""}}))
    (bag / f"split_1{suffix}").unlink()
    rc = cli(bag, tmp_path / "out", "--config", str(scripted_config))
    decisions = lines(tmp_path / "out" / "decisions.jsonl")
    assert [d["proposal"]["id"] for d in decisions] == ["p0", "p1", "p2"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["messages"] == {"/camera/image_raw": {"expected": 6, "read": 3},
                                   "/guard/proposals": {"expected": 6, "read": 3}}
    assert rc == 1
    err = capsys.readouterr().err
    assert f"metadata.yaml lists split_1{suffix}, not in the folder" in err
    assert "6 messages the index counts were never read" in err


def test_split_files_are_read_in_split_order(tmp_path):
    from guard.replay.bag import _storage_files

    for k in (0, 1, 2, 10, 11):
        (tmp_path / f"rec_{k}.db3").write_bytes(b"")
    assert [p.name for p in _storage_files(tmp_path)] == [
        "rec_0.db3", "rec_1.db3", "rec_2.db3", "rec_10.db3", "rec_11.db3"]


# -- a judge that could not be reached -----------------------------------------------------------


def test_replay_with_the_judge_down_exits_non_zero(tmp_path, capsys):
    """An OpenAI-compatible judge on a port nobody listens on: every check fails to run."""
    pytest.importorskip("httpx")
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "down.yaml"
    config.write_text(
        "model:\n  backend: openai\n  id: judge\n  openai:\n"
        f"    base_url: http://127.0.0.1:{port}/v1\n    timeout_s: 5\n"
        "policy:\n  max_frame_age_ms: 1000\n")
    rc = cli(ROSBAG2_STYLE / "sqlite3", tmp_path / "out", "--config", str(config))
    captured = capsys.readouterr()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checks"] == {"run": 6, "failed": 6, "judge_unreachable": True}
    assert rc == 1
    assert "6 of 6 checks failed to run" in captured.out
    assert "the judge could not be reached" in captured.err
    assert (tmp_path / "out" / "report.html").is_file()


def test_some_failed_checks_are_counted_but_not_fatal(tmp_path, capsys):
    config = tmp_path / "flaky.yaml"
    config.write_text(SCRIPTED_CONFIG.replace(
        '      - text: "ALLOW\\nrisk: 0.0"',
        '      - text: "ALLOW\\nrisk: 0.0"\n      - raise_error: "connection reset"'))
    rc = cli(ROSBAG2_STYLE / "mcap", tmp_path / "out", "--config", str(config))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checks"]["run"] == 6 and 0 < summary["checks"]["failed"] < 6
    assert not summary["checks"]["judge_unreachable"]
    assert f"{summary['checks']['failed']} of 6 checks failed to run" in capsys.readouterr().out
    assert rc == 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="regenerate tests/data/replay/rosbag2_style")
    p.add_argument("--regenerate", action="store_true", required=True)
    p.parse_args()
    for kind in ("mcap", "sqlite3"):
        print(write_rosbag2_style(ROSBAG2_STYLE / kind, kind))
