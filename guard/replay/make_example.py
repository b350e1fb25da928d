"""Write the committed example episodes from the synthetic world.

    python -m guard.replay.make_example                 # examples/world_episode.mcap + .../
    python -m guard.replay.make_example --out /tmp/ex --steps 100 --seed 3

Writes `world_episode.mcap` (a bare MCAP: CompressedImage JPEG frames on /camera/image_raw,
std_msgs/String JSON proposals with labels on /guard/proposals) and the same episode as JSONL
(`world_episode/episode.jsonl` + `world_episode/frames/`). Every step is one scene: a frame at
t, the same view again at t+0.5 s, a proposal at t+0.7 s; the next scene's frame comes at
t+1 s, after the proposal, so a replay that looked ahead would judge the wrong scene.
Same arguments, same files. Regenerate after changing the world's renderer or sampler, and
update the expected decisions in tests/test_replay.py if the actions change.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guard.replay.writer import BagFrame, BagProposal

# Bag time of the first step: a plausible wall-clock epoch (2023-11-14), as a robot records.
T0 = 1_700_000_000.0
MCAP_NAME = "world_episode.mcap"
JSONL_DIR = "world_episode"


def example_items(
    steps: int = 24, seed: int = 0, split: str = "test_iid"
) -> list[BagFrame | BagProposal]:
    """Frames and proposals of the example episode (see the module docstring)."""
    from guard.replay.writer import BagFrame, BagProposal
    from guard.world import iter_episode

    items: list[BagFrame | BagProposal] = []
    for k, step in enumerate(iter_episode(seed=seed, steps=steps, split=split)):
        t = T0 + step.t
        items.append(BagFrame(t=t, image=step.frame))
        items.append(BagFrame(t=t + 0.5, image=step.frame))
        items.append(BagProposal(t=t + 0.7, proposal={
            "id": f"step-{k:03d}",
            "name": step.item.action,
            "description": step.action,
            "arguments": {},
            "label": step.label,
        }))
    return items


def make_example(out: str | Path = "examples", steps: int = 24, seed: int = 0) -> list[Path]:
    """Write both example episodes into `out`, replacing earlier ones; return their paths."""
    from guard.replay.writer import write_bag, write_jsonl

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    items = example_items(steps, seed)
    mcap = root / MCAP_NAME
    jsonl_dir = root / JSONL_DIR
    mcap.unlink(missing_ok=True)
    shutil.rmtree(jsonl_dir, ignore_errors=True)
    write_bag(mcap, items, storage="mcap", bare=True)
    # JSONL times start at 0: the format has no epoch, and small numbers read better.
    shifted = [dataclasses.replace(i, t=round(i.t - T0, 6)) for i in items]
    jsonl = write_jsonl(jsonl_dir / "episode.jsonl", shifted)
    return [mcap, jsonl]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guard.replay.make_example",
                                description="write the example replay episodes")
    p.add_argument("--out", default="examples", help="output folder (default: examples)")
    p.add_argument("--steps", type=int, default=24, help="scenes in the episode (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    args = p.parse_args(argv)
    for path in make_example(args.out, args.steps, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
