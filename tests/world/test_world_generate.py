"""`generate` on disk: determinism, the items.jsonl schema, images, world.json, episodes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from guard.prompting.parser import parse_answer
from guard.types import Verdict
from guard.world import (
    CATEGORIES,
    RULES,
    WorldConfig,
    generate,
    iter_episode,
    read_items,
    render_item,
    sample_item,
)

cv2 = pytest.importorskip("cv2")

KEYS = {
    "id", "image", "query", "category", "hazard", "consequence", "label", "reference_answer",
    "split", "rule", "scene", "action", "tool", "target_rule", "ood",
}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate("train", 24, tmp_path / "a", seed=1)
    b = generate("train", 24, tmp_path / "b", seed=1)
    c = generate("train", 24, tmp_path / "c", seed=2)
    assert a.name == "items.jsonl" and a.parent == tmp_path / "a"
    da, db, dc = _digest(a.parent), _digest(b.parent), _digest(c.parent)
    assert da == db
    # images, items.jsonl, metadata.jsonl, README.md (the dataset card), world.json
    assert len(da) == 24 + 4
    assert da["metadata.jsonl"] != dc["metadata.jsonl"]
    assert da["items.jsonl"] != dc["items.jsonl"]
    assert {k: v for k, v in da.items() if k.startswith("images/")}.values() != {
        k: v for k, v in dc.items() if k.startswith("images/")
    }.values()
    # a smaller set is a prefix of a larger one
    d = generate("train", 10, tmp_path / "d", seed=1)
    assert d.read_text().splitlines() == a.read_text().splitlines()[:10]


@pytest.mark.parametrize("split", ["train", "test_iid", "test_ood"])
def test_items_schema(tmp_path: Path, split: str) -> None:
    path = generate(split, 40, tmp_path, seed=0)
    items = read_items(tmp_path)
    assert len(items) == 40 and read_items(path) == items
    ids = [it["id"] for it in items]
    assert len(set(ids)) == len(ids)
    for it in items:
        assert set(it) == KEYS
        assert isinstance(it["id"], str) and it["split"] == split
        assert not Path(it["image"]).is_absolute() and (tmp_path / it["image"]).is_file()
        assert it["label"] in ("safe", "unsafe")
        assert isinstance(it["scene"], dict) and set(it["scene"]) == {"grid", "objects"}
        assert it["target_rule"] in RULES
        assert it["consequence"].endswith(".")
        assert (it["ood"] is not None) == (split == "test_ood")
        answer = parse_answer(it["reference_answer"])
        first = it["reference_answer"].splitlines()[0]
        if it["label"] == "unsafe":
            assert first == "VETO" and answer.verdict is Verdict.VETO
            assert it["category"] in CATEGORIES and it["rule"] in RULES
            assert it["hazard"].endswith(".") and it["hazard"][0].isupper()
            assert answer.hazards[0].category == it["category"]
            assert answer.risk == max(h.severity for h in answer.hazards) >= 0.5
            assert answer.consequence == it["consequence"]
            assert re.fullmatch(r"hazard: [a-z_]+ \| [^|]+ \| [^|]+ \| [0-9.]+",
                                it["reference_answer"].splitlines()[2])
        else:
            assert first == "ALLOW" and answer.verdict is Verdict.ALLOW
            assert it["category"] == "none" and it["hazard"] == "" and it["rule"] is None
            assert answer.hazards == [] and answer.risk is not None and answer.risk < 0.5
            assert answer.consequence == it["consequence"]


def test_world_json(tmp_path: Path) -> None:
    cfg = WorldConfig(image_size=96, rules=("stove_flammable", "robot_path"))
    generate("test_ood", 4, tmp_path, seed=7, config=cfg)
    meta = json.loads((tmp_path / "world.json").read_text())
    assert meta["seed"] == 7 and meta["split"] == "test_ood" and meta["n"] == 4
    assert WorldConfig.model_validate(meta["config"]) == cfg
    assert {r["name"] for r in meta["rules"]} == set(RULES)
    assert str(tmp_path) not in (tmp_path / "world.json").read_text()


@pytest.mark.parametrize("size", [112, 224, (640, 480)])
def test_images_decode_at_the_configured_size(tmp_path: Path, size: int | tuple[int, int]) -> None:
    cfg = WorldConfig(image_size=size)
    generate("train", 3, tmp_path, config=cfg)
    w, h = (size, size) if isinstance(size, int) else size
    for it in read_items(tmp_path):
        img = cv2.imread(str(tmp_path / it["image"]), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (h, w, 3) and img.dtype == np.uint8
        assert img.std() > 5  # something is drawn


def test_rendering_shows_state_and_contact() -> None:
    """Twins differ in pixels exactly where the rule looks (no appearance randomness)."""
    from guard.world.drawing import render
    from guard.world.scene import Scene

    cfg = WorldConfig.preset("easy")
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    off = render(Scene.of(("stove", 1, 1, False)), cfg, rng())
    on = render(Scene.of(("stove", 1, 1, True)), cfg, rng())
    towel = render(Scene.of(("stove", 1, 1), ("towel", 1, 1)), cfg, rng())
    diff_on = np.abs(on.astype(int) - off.astype(int)).sum(axis=2) > 30
    diff_towel = np.abs(towel.astype(int) - off.astype(int)).sum(axis=2) > 30
    for diff in (diff_on, diff_towel):
        ys, xs = np.nonzero(diff)
        assert len(ys) > 20
        # all changed pixels lie inside cell (1, 1): rows and columns 28..55 at 112 px
        assert ys.min() >= 28 and ys.max() < 56 and xs.min() >= 28 and xs.max() < 56


def test_a_tray_shows_an_item_alike_on_every_anchor() -> None:
    """`item_on_anchor: tray`: the cell's top-left quarter (one image patch at 28 px cells)
    shows the item the same on a stove, a hot plate or a table; the rest shows the anchor.
    Centred, the item's pixels mix with each anchor's."""
    from guard.world.drawing import render
    from guard.world.scene import Scene

    def cell(anchor: str, item: str | None, mode: str) -> np.ndarray:
        cfg = WorldConfig.preset("easy").model_copy(update={"appearance": (
            WorldConfig.preset("easy").appearance.model_copy(update={"item_on_anchor": mode}))})
        objs: list[tuple[str, int, int]] = [(anchor, 1, 1)] + ([(item, 1, 1)] if item else [])
        return render(Scene.of(*objs), cfg, np.random.default_rng(0))[28:56, 28:56].astype(int)

    for mode, alike in (("tray", True), ("centre", False)):
        stove, plate, table = (cell(a, "box", mode) for a in ("stove", "hot_plate", "table"))
        quarter = slice(2, 12)  # inside the 14 px quarter, clear of its edges
        for other in (plate, table):
            same = bool(np.abs(stove[quarter, quarter] - other[quarter, quarter]).max() <= 3)
            assert same == alike, mode
        if mode == "tray":
            # the item is there (the tray's quarter differs from an empty stove's) and the
            # anchor still shows in the rest of the cell
            empty = cell("stove", None, mode)
            assert np.abs(stove[quarter, quarter] - empty[quarter, quarter]).max() > 30
            assert np.abs(stove[16:26, 16:26] - plate[16:26, 16:26]).max() > 30


def test_a_larger_item_on_its_tray_stays_inside_the_tray() -> None:
    """`tray_item_scale`: the item's share of its tray. A larger item covers more of the
    quarter, and still only the quarter: the picture stays alike on every anchor."""
    from guard.world.drawing import render
    from guard.world.scene import Scene

    def cell(anchor: str, item: str | None, scale: float) -> np.ndarray:
        easy = WorldConfig.preset("easy")
        cfg = easy.model_copy(update={"appearance": easy.appearance.model_copy(
            update={"item_on_anchor": "tray", "tray_item_scale": scale})})
        objs: list[tuple[str, int, int]] = [(anchor, 1, 1)] + ([(item, 1, 1)] if item else [])
        return render(Scene.of(*objs), cfg, np.random.default_rng(0))[28:56, 28:56].astype(int)

    from guard.world.drawing import _TRAY

    covered = {}
    for scale in (0.5, 0.9):
        stove, plate = cell("stove", "box", scale), cell("hot_plate", "box", scale)
        towel = cell("stove", "towel", scale)
        # the item's pixels: those of the quarter that are not the tray's plain colour
        covered[scale] = int((np.abs(stove[1:13, 1:13] - _TRAY).max(axis=2) > 30).sum())
        assert np.abs(stove[:14, :14] - plate[:14, :14]).max() <= 3
        # outside the quarter nothing tells a box from a towel: the item stays on its tray
        assert np.abs(stove[15:, :] - towel[15:, :]).max() <= 3
        assert np.abs(stove[:, 15:] - towel[:, 15:]).max() <= 3
    assert covered[0.9] > 2 * covered[0.5]
    with pytest.raises(ValueError, match="tray_item_scale"):
        WorldConfig(appearance={"item_on_anchor": "tray", "tray_item_scale": 1.5})


def test_render_is_deterministic_and_varied() -> None:
    it = sample_item(0, "train", seed=0)
    assert np.array_equal(render_item(it), render_item(it))
    other = sample_item(1, "train", seed=0)
    assert not np.array_equal(render_item(it), render_item(other))


def test_episode_is_time_ordered() -> None:
    steps = list(iter_episode(seed=0, steps=6))
    assert [s.t for s in steps] == sorted(s.t for s in steps)
    assert {s.label for s in steps} <= {"safe", "unsafe"}
    for s in steps:
        assert s.frame.shape == (112, 112, 3) and s.action == s.item.query
    again = list(iter_episode(seed=0, steps=6))
    assert all(np.array_equal(a.frame, b.frame) for a, b in zip(steps, again, strict=True))
    assert [s.item.id for s in iter_episode(seed=0, steps=3, episode=1)] != [
        s.item.id for s in steps[:3]
    ]


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="unknown rules"):
        WorldConfig(rules=("stove_flammable", "teleport"))
    with pytest.raises(ValidationError, match="outside"):
        WorldConfig(held_out_cells=((5, 5),))
    with pytest.raises(ValidationError, match="not an anchor"):
        WorldConfig(held_out_pairs=(("towel", "stove"),))
    with pytest.raises(ValidationError):
        WorldConfig(image_size=8)
    with pytest.raises(ValidationError):
        WorldConfig(colour="red")  # unknown fields are errors
    with pytest.raises(ValueError, match="unknown preset"):
        WorldConfig.preset("nightmare")
    assert WorldConfig.preset("hard").rules == tuple(RULES)
    assert all(not RULES[r].opt_in for r in WorldConfig().rules)
    assert WorldConfig(image_size=(640, 480)).width == 640


def test_generate_from_start_writes_the_episode_s_scenes(tmp_path: Path) -> None:
    """`guard world generate --start 1000000000` gives, as items, the scenes `guard demo` and
    the example episodes judge: same ids, labels, tools, phrases and pixels."""
    from guard.world.dataset import EPISODE_START

    generate("test_iid", 4, tmp_path, seed=0, start=EPISODE_START)
    records = read_items(tmp_path)
    steps = list(iter_episode(seed=0, steps=4))
    assert [r["id"] for r in records] == [s.item.id for s in steps]
    assert [(r["tool"], r["query"], r["label"]) for r in records] == [
        (s.item.action, s.action, s.label) for s in steps]
    for r, s in zip(records, steps, strict=True):
        img = cv2.cvtColor(cv2.imread(str(tmp_path / r["image"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(img, s.frame)
    assert json.loads((tmp_path / "world.json").read_text())["start"] == EPISODE_START
