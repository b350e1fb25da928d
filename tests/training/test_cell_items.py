"""The per-cell item targets of the composition probe (`knife_child_fastloop
--cell-item-weight`): one class per grid cell in the merged tokens' raster order, and the
key cell of a held-out composition is the cell of the held-out pair."""

from __future__ import annotations

from guard.world import WorldConfig, iter_items
from training.probes.composition_perception import KEY_ANCHOR
from training.probes.knife_child_fastloop import ITEM_CLASSES, _cell_items


def test_every_cell_names_its_item_in_raster_order() -> None:
    cfg = WorldConfig()
    targets = _cell_items("train", 24, seed=77, start=5, config=cfg)
    scenes = [w.scene for w in iter_items("train", 24, seed=77, config=cfg, start=5)]
    assert len(targets) == len(scenes)
    named = 0
    for t, scene in zip(targets, scenes, strict=True):
        cells = t["cells"].tolist()
        assert len(cells) == scene.rows * scene.cols
        for r, c in scene.cells():
            it = scene.item((r, c))
            assert ITEM_CLASSES[cells[r * scene.cols + c]] == (it.kind if it else "")
            named += it is not None
        assert t["key_cell"] is None and t["new_here"] is None  # no held-out pair in train
    assert named > 24  # scenes hold items: the check above compared something


def test_the_key_cell_of_a_composition_holds_the_held_out_pair() -> None:
    cfg = WorldConfig()
    held = set(cfg.held_out_pairs)
    items = list(iter_items("test_ood", 64, seed=2000, config=cfg))
    targets = _cell_items("test_ood", 64, seed=2000, start=0, config=cfg)
    keyed = 0
    for w, t in zip(items, targets, strict=True):
        if t["key_cell"] is None:
            assert w.ood != "composition" or w.rule not in KEY_ANCHOR
            continue
        keyed += 1
        r, c = divmod(t["key_cell"], w.scene.cols)
        (anchor,) = [a.kind for a in w.scene.find(KEY_ANCHOR[w.rule]) if a.cell == (r, c)]
        item = ITEM_CLASSES[t["cells"][t["key_cell"]]]
        assert (anchor, item) in held
        assert {ITEM_CLASSES[k] for k in t["new_here"]} == {i for a, i in held if a == anchor}
    assert keyed > 0


def test_projection_rows_keep_the_answer_through_the_verdict() -> None:
    """A projection-first row's verdict comes after its scene and effect lines: the probe
    trains on those lines and reads the verdict where it stands, not at the first token."""
    from guard.backends.qwen_inputs import IGNORE_INDEX
    from guard.types import Verdict
    from training.data import world_items
    from training.evaluate import load_for_eval
    from training.probes.knife_child_fastloop import _encode

    model, processor = load_for_eval("guard/models/hazardworld-small")
    items = world_items("train", 6, seed=77, config=WorldConfig())
    verdicts = {processor.tokenizer.encode(v.word, add_special_tokens=False)[0]
                for v in (Verdict.VETO, Verdict.ALLOW)}
    plain = _encode(model, processor, items)
    projected = _encode(model, processor, items, projection_rate=1.0)
    for p, q in zip(plain, projected, strict=True):
        for e in (p, q):
            at = e["verdict_at"]
            assert e["input_ids"].shape[1] == at + 1  # cut right after the verdict
            assert int(e["labels"][0, at]) in verdicts
        answer = (q["labels"][0] != IGNORE_INDEX).nonzero()[:, 0]
        assert len(answer) > 10 and int(answer[-1]) == q["verdict_at"]  # scene, effect, verdict
        assert (p["labels"][0] != IGNORE_INDEX).sum() == 1
        assert int(p["labels"][0, p["verdict_at"]]) == int(q["labels"][0, q["verdict_at"]])
