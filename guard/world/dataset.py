"""Writing a split to disk, and episodes for replay.

`generate` is what `guard world generate --split S --n N --out DIR [--seed S]` calls. It writes:

    DIR/items.jsonl      one item per line (schema below)
    DIR/images/<id>.png  the camera frames
    DIR/world.json       the config, seed, split, n and rule table used

items.jsonl fields (OOD-MMSafe style first, then the world's own):
    id, image (path relative to DIR), query (the action text), category (hazard category or
    "none"), hazard (one sentence, "" when safe), consequence (one sentence), label
    ("safe" | "unsafe"), reference_answer (the guard's answer format), split, rule (the rule
    that fired, null when safe), scene (compact JSON of the objects), action (action key),
    tool (the proposal's tool name: the action key; the query is its description),
    target_rule (the rule the item tests, set for safe twins too: use it for per-rule
    accuracy), ood (test_ood only: "composition" or "layout", else null).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guard.world.config import WorldConfig
from guard.world.rules import describe_rules
from guard.world.sampler import WORLD_VERSION, WorldItem, render_item, sample_item

ITEMS_FILE = "items.jsonl"
IMAGES_DIR = "images"
WORLD_FILE = "world.json"


def _progress(it: range, total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    # disable=None: a bar on a terminal, silence in logs and CI
    return tqdm(it, total=total, desc=desc, unit="item", disable=None)


def generate(split: str, n: int, out_dir: str | Path, seed: int = 0,
             config: WorldConfig | None = None, start: int = 0) -> Path:
    """Generate items ``start .. start+n-1`` of `split` into `out_dir`.

    Same (split, n, seed, config, start) gives byte-identical files. Item i does not depend on
    `n`. ``start=EPISODE_START`` gives the scenes of `iter_episode`'s first episode (what
    `guard demo` and the example replay episodes judge), as benchmark items.

    Args:
        split: "train", "test_iid" or "test_ood".
        n: Number of items (>= 0).
        out_dir: Output folder (created if missing; existing files of the same names are
            overwritten).
        seed: World seed.
        config: World config; None uses the defaults (112 px, the learnable rule set).
        start: Index of the first item.

    Returns:
        The path of the written items.jsonl.
    """
    from guard.world.drawing import encode_png

    cfg = config or WorldConfig()
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    jsonl = out / ITEMS_FILE
    # write to a temporary name first: an interrupted run never leaves a short items.jsonl
    tmp = jsonl.with_suffix(".jsonl.part")
    with tmp.open("w", encoding="utf-8") as fh:
        for i in _progress(range(start, start + n), n, f"world {split}"):
            item = sample_item(i, split, seed, cfg)
            rel = f"{IMAGES_DIR}/{item.id}.png"
            (out / rel).write_bytes(encode_png(render_item(item, cfg)))
            fh.write(json.dumps(item.to_record(rel), ensure_ascii=False, separators=(",", ":")))
            fh.write("\n")
    tmp.replace(jsonl)
    meta = {
        "world_version": WORLD_VERSION,
        "split": split,
        "n": n,
        "start": start,
        "seed": seed,
        "config": cfg.model_dump(mode="json"),
        "rules": describe_rules(),
        "items": ITEMS_FILE,
    }
    (out / WORLD_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return jsonl


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """The records of an items.jsonl (or of the folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / ITEMS_FILE
    with p.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


#: Index of the first item of `iter_episode`'s episodes: far beyond any item set of a seed, so an
#: episode never repeats a set's items.
EPISODE_START = 10**9


@dataclass(frozen=True)
class EpisodeStep:
    """One moment of an episode: what the camera sees and what the robot proposes.

    Attributes:
        t: Seconds since the episode started.
        frame: RGB uint8 camera frame.
        action: The proposed action text.
        label: "safe" or "unsafe".
        item: The full item (scene, findings, reference answer).
    """

    t: float
    frame: np.ndarray
    action: str
    label: str
    item: WorldItem


def iter_episode(seed: int = 0, steps: int = 20, split: str = "test_iid",
                 config: WorldConfig | None = None, period_s: float = 1.0,
                 episode: int = 0) -> Iterator[EpisodeStep]:
    """A time-ordered stream of (frame, proposal, label) for `guard replay`.

    Each step is a fresh scene (the robot moves from room to room) with one proposal; labels
    stay balanced as in the item sets. Writing these to MCAP is a later step; this is the source.

    Args:
        seed: World seed.
        steps: Number of steps.
        split: Which split's distribution to draw from.
        config: World config.
        period_s: Time between steps.
        episode: Episode number: different episodes of one seed never share items.

    Yields:
        EpisodeStep in time order.
    """
    cfg = config or WorldConfig()
    for k in range(steps):
        item = sample_item(EPISODE_START + episode * 10**6 + k, split, seed, cfg)
        yield EpisodeStep(t=k * period_s, frame=render_item(item, cfg), action=item.query,
                          label=item.label, item=item)
