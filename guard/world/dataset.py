"""Writing a split to disk, and episodes for replay.

`generate` is what `guard world generate --split S --n N --out DIR [--seed S]` calls. It writes:

    DIR/items.jsonl      one item per line (schema below)
    DIR/images/<i>.png   the camera frames, named by item index (zero-padded)
    DIR/metadata.jsonl   the same records for the Hugging Face ``datasets`` imagefolder loader
    DIR/README.md        a dataset card naming the split (``load_dataset(DIR)``)
    DIR/world.json       the config, seed, split, n and rule table used

Loading a split with ``datasets``::

    load_dataset("imagefolder", data_dir=DIR, split="train")  # any folder name, split "train"
    load_dataset(DIR)                                          # the card: split named S

Each row holds ``image`` (decoded PIL) and every field of items.jsonl except ``image``, with
``scene`` as compact JSON text (``json.loads`` gives items.jsonl's object; text keeps the column
type the same for every split and size). Frames are named by index, not by id: ids hold the
split's name, and ``datasets`` would read "train" or "test" in a file name as a split of its own
and leave metadata.jsonl's labels out. ``load_dataset("json", data_files=DIR/items.jsonl)``
reads ``image`` as the path text it is; use the imagefolder layout for images.

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
#: The imagefolder convention: a ``file_name`` column naming each image, beside the labels.
METADATA_FILE = "metadata.jsonl"
CARD_FILE = "README.md"


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
    jsonl, metadata = out / ITEMS_FILE, out / METADATA_FILE
    # write to temporary names first: an interrupted run never leaves a short items.jsonl
    tmp, tmp_meta = jsonl.with_suffix(".jsonl.part"), metadata.with_suffix(".jsonl.part")
    width = max(6, len(str(start + n - 1)))
    with tmp.open("w", encoding="utf-8") as fh, tmp_meta.open("w", encoding="utf-8") as meta_fh:
        for i in _progress(range(start, start + n), n, f"world {split}"):
            item = sample_item(i, split, seed, cfg)
            rel = f"{IMAGES_DIR}/{i:0{width}d}.png"
            (out / rel).write_bytes(encode_png(render_item(item, cfg)))
            record = item.to_record(rel)
            fh.write(_line(record))
            meta_fh.write(_line(metadata_record(record)))
    tmp_meta.replace(metadata)
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
        "metadata": METADATA_FILE,
    }
    (out / WORLD_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / CARD_FILE).write_text(dataset_card(split, n, seed, start), encoding="utf-8")
    return jsonl


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def metadata_record(record: dict[str, Any]) -> dict[str, Any]:
    """An items.jsonl record as a metadata.jsonl row: ``file_name`` first (the imagefolder
    convention) instead of ``image``, ``scene`` as compact JSON text, every other field as is."""
    row = {"file_name": record["image"]}
    for key, value in record.items():
        if key != "image":
            row[key] = (json.dumps(value, separators=(",", ":")) if key == "scene"
                        else value)
    return row


def dataset_card(split: str, n: int, seed: int, start: int = 0) -> str:
    """The README.md of a generated split: front matter naming the split's files (so
    ``load_dataset(DIR)`` gives a split named `split`, labels joined to images), and what the
    folder holds."""
    import yaml

    front = {
        "pretty_name": f"embodied-guard synthetic consequence world, {split}",
        "tags": ["synthetic", "robotics", "safety", "embodied-guard"],
        "task_categories": ["image-text-to-text"],
        "size_categories": [_size_category(n)],
        "configs": [{
            "config_name": "default",
            "data_files": [{"split": split,
                            "path": [METADATA_FILE, f"{IMAGES_DIR}/*.png"]}],
        }],
    }
    return (
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n"
        f"# Synthetic consequence world: `{split}`, seed {seed}, {n} items from index {start}\n\n"
        "Written by `guard world generate` (embodied-guard). Each item is a rendered camera "
        "frame, a proposed action and whether doing it in this scene is safe, with the hazard, "
        "its consequence and the guard's reference answer.\n\n"
        "```python\n"
        "from datasets import load_dataset\n\n"
        'ds = load_dataset("imagefolder", data_dir=".", split="train")\n'
        f'ds = load_dataset(".", split="{split}")  # the same rows, through this card\n'
        "```\n\n"
        "`metadata.jsonl` (for `datasets`) and `items.jsonl` (for `guard bench`) hold the same "
        "records; `scene` is JSON text in the first. `world.json` records the world config "
        "and rule table.\n"
    )


def _size_category(n: int) -> str:
    """The hub's size bucket for `n` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


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
