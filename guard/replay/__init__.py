"""Offline replay of logged episodes through the guard, with reports.

    guard replay examples/world_episode.mcap --out /tmp/replay \
        --config examples/replay_scripted.yaml

`replay(episode, out_dir, guard=...)` judges each recorded proposal against the frames that
existed at its time (never later ones) and writes decisions.jsonl, summary.json and a
self-contained report.html. Episodes: rosbag2 folders (sqlite3 or MCAP), bare .mcap/.db3 files
(read with rosbags, no ROS install), and JSONL episodes. Damaged input is counted, listed and
vetoed, never a crash and never an allow.

Modules: `episode` (readers, JSONL format, damage kinds), `bag` (rosbag2/MCAP), `mcapscan`
(what is left of a cut MCAP), `msgs` (types without ROS), `runner` (the loop), `report` (the
outputs and their metrics), `writer` (writing bags and JSONL episodes), `make_example`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guard.replay.episode import Damage, Episode, open_episode
    from guard.replay.runner import ReplayResult, replay
    from guard.replay.writer import BagFrame, BagProposal, BagRaw, write_bag, write_jsonl

_LAZY = {
    "Damage": "guard.replay.episode",
    "Episode": "guard.replay.episode",
    "open_episode": "guard.replay.episode",
    "ReplayResult": "guard.replay.runner",
    "replay": "guard.replay.runner",
    "BagFrame": "guard.replay.writer",
    "BagProposal": "guard.replay.writer",
    "BagRaw": "guard.replay.writer",
    "write_bag": "guard.replay.writer",
    "write_jsonl": "guard.replay.writer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guard.replay' has no attribute {name!r}")


__all__ = [
    "BagFrame",
    "BagProposal",
    "BagRaw",
    "Damage",
    "Episode",
    "ReplayResult",
    "open_episode",
    "replay",
    "write_bag",
    "write_jsonl",
]
