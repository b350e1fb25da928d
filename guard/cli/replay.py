"""`guard replay`: judge a logged episode offline and write decisions, a summary and a report.

    guard replay examples/world_episode.mcap --out /tmp/replay \
        --config examples/replay_scripted.yaml
    guard replay BAG_DIR --out /tmp/replay --model /tmp/tiny --backend transformers \
        --image-topic /camera/color/image_raw/compressed --limit 100

EPISODE: a rosbag2 folder (sqlite3 or MCAP), a bare .mcap/.db3 file, a .jsonl episode or a
folder holding episode.jsonl. Writes DIR/decisions.jsonl, DIR/summary.json, DIR/report.html,
and the audit log DIR/audit.jsonl unless --audit says where. --write-mcap also writes
DIR/episode_with_verdicts.mcap (the episode's streams, /guard/decisions and Foxglove image
annotations of each judged frame; open it in Foxglove to see each verdict over its frame).
Frame ages are measured in bag time: a proposal sees only frames recorded at or before it.

Exit 0 when the whole episode was replayed and the judge answered (records that were read but
are unusable, such as a proposal without a name or a frame that does not decode, are vetoed,
counted in summary.json and reported on stderr). Exit 1 when part of the episode could not be
read (the recording is cut or unreadable, a JSONL line is not an event, or fewer messages were
read than the bag's index counts: summary.json's `messages`), when every check that went to
the judge failed to run (error or timeout: the judge could not be reached), or when the model
did not load. Exit 2 for a usage error: bad flags, an episode with no proposals, a topic that
is not in the episode or holds the wrong type.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from guard.cli.check import add_judge_arguments, load_judge_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("episode", metavar="EPISODE",
                   help="rosbag2 folder, .mcap/.db3 file, .jsonl episode (or its folder)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_judge_arguments(p)
    p.add_argument("--image-topic", default=None, metavar="TOPIC",
                   help="camera topic, Image or CompressedImage (default: /camera/image_raw, "
                   "else the bag's only image topic)")
    p.add_argument("--proposal-topic", default=None, metavar="TOPIC",
                   help="proposal topic, guard_interfaces/ActionProposal or std_msgs/String "
                   "JSON (default: /guard/proposals)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="judge at most N proposals")
    p.add_argument("--deadline-ms", type=float, default=None, metavar="N",
                   help="per-check deadline in ms (overrides the config)")
    p.add_argument("--write-mcap", action="store_true",
                   help="also write DIR/episode_with_verdicts.mcap: the episode's streams, "
                   "/guard/decisions and Foxglove image annotations of each judged frame")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guard.errors import UsageError

    episode = Path(args.episode)
    if not episode.exists():
        raise UsageError(f"EPISODE {episode}: not found")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # Replay decisions are an experiment, not the robot's record: audit into DIR by default.
    config = load_judge_config(args, **{
        "policy.deadline_ms": args.deadline_ms,
        "audit.path": args.audit or str(out / "audit.jsonl"),
    })

    from guard.cli.check import open_guard
    from guard.replay.episode import open_episode
    from guard.replay.report import messages_line
    from guard.replay.runner import replay

    # Opened before the model loads: an episode that cannot be replayed as asked (no proposals,
    # a wrong topic) is a usage error found in a moment.
    opened = open_episode(
        episode, image_topic=args.image_topic, proposal_topic=args.proposal_topic,
        max_input_pixels=config.image.max_input_pixels, max_file_bytes=config.image.max_file_bytes,
    )
    try:
        with open_guard(config) as guard:
            result = replay(
                opened, out, guard=guard, limit=args.limit,
                progress=False if args.no_progress else None,
                write_mcap=args.write_mcap,
            )
    finally:
        opened.close()
    s = result.summary
    v, checks = s["verdicts"], s["checks"]
    print(f"{s['n_proposals']} proposals: {v['allow']} allow, {v['annotate']} annotate, "
          f"{v['veto']} veto; {checks['failed']} of {checks['run']} checks failed to run; "
          f"latency p50 {_ms(s['latency_ms']['p50'])}, p95 {_ms(s['latency_ms']['p95'])}")
    if s["messages"]:
        print(f"messages read: {messages_line(s)}")
    labels = s["labels"]
    if labels:
        print(f"labels: recall on unsafe {_share(labels['recall_unsafe'])}, "
              f"R0 {_share(labels['r0'])}, false-veto rate {_share(labels['false_veto_rate'])}")
    print(f"report: {result.report_path}")
    if "mcap" in s:
        m = s["mcap"]
        print(f"mcap: {m['path']} ({m['frames']} frames, {m['proposals']} proposals, "
              f"{m['decisions']} decisions, {m['annotations']} annotated frames)")
        if m["n_skipped"]:
            print(f"guard replay: note: {m['n_skipped']} messages not copied into the MCAP "
                  f"(listed in {result.summary_path})", file=sys.stderr)
    damaged = s["damaged"]
    for note in s["notes"]:
        print(f"guard replay: note: {note}", file=sys.stderr)
    if damaged["count"]:
        kinds = ", ".join(f"{k} {n}" for k, n in damaged["by_kind"].items())
        print(f"guard replay: damaged input: {kinds} (listed in {result.summary_path})",
              file=sys.stderr)
        seen: set[str] = set()
        for item in damaged["items"]:  # the first reason of each kind, so no file must be opened
            if item["kind"] not in seen:
                seen.add(item["kind"])
                where = f" ({item['topic']})" if item.get("topic") else ""
                print(f"guard replay:   {item['kind']}{where}: {item['detail']}", file=sys.stderr)
    from guard.replay.episode import LOST_KINDS

    code = 0
    lost = [f"{k} {n}" for k, n in damaged["by_kind"].items() if k in LOST_KINDS]
    if s["lost_messages"]:
        lost.append(f"{s['lost_messages']} messages the index counts were never read "
                    f"({messages_line(s)})")
    if lost:
        print(f"guard replay: incomplete: part of the episode could not be read: "
              f"{'; '.join(lost)}", file=sys.stderr)
        code = 1
    if checks["judge_unreachable"]:
        statuses = s["statuses"]
        print(f"guard replay: every check failed to run ({statuses['error']} error, "
              f"{statuses['timeout']} timeout): the judge could not be reached", file=sys.stderr)
        code = 1
    return code


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
