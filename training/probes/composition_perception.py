"""Composition diagnostic for the contact rules: when the judge answers a held-out (anchor,
item) pair at chance, is the item lost in PERCEPTION (the key cell's vision token does not
carry "flammable" / the item's identity in a form that transfers to a new anchor) or in the
DECODER (the token carries it, a readout fit on train pairs transfers, but the language model
learned pair lookups)? Forward passes only (a few minutes on 2 cores).

    python -m training.probes.composition_perception --model guard/models/hazardworld-small \
        --n-train 800 --n-test 1024 [--seed 77] [--test-seed 2000] [--out report.json]

Fit set: the first `n-train` contact-rule scenes (`stove_flammable`, `hot_plate_flammable`)
of `train` at world seed `seed`, those with an item on the key anchor (the stove or hot plate
the action switches on). Test set: every `composition` item among the first `n-test` items of
`test_ood` at `test-seed` (validation: never the test seed), whose key pair is held out of
train entirely (a box or pot on the stove, paper or a pan on the hot plate).

For the given model and a random-weight model of the same config, linear probes (logistic
regression) fit on the train pairs and scored on the held-out pairs, with 5-fold
cross-validated accuracy on the train pairs as the in-distribution reference, for two targets:
``flammable`` (towel, paper, box vs pan, pot: the label) and ``item`` (which of the five lies
on the anchor: does a box on the stove read as a box? As every item but the towel lies on one
anchor only in train, a free 5-way readout can lean on the anchor; ``held_out_forced`` asks
only among the items new on that anchor: box or pot on the stove, paper or pan on the hot
plate), on these features:

- ``cell_token``: the merged vision token of the key anchor's cell (raster order; the mapping
  is checked by painting each cell and finding the token that moves most);
- ``image_mean``: the 16 vision tokens averaged (position-free);
- ``cell_L{k}``: the language model's hidden state after layer k at the key cell's image
  token (L0 is the vision token as the decoder receives it);
- ``verdict_L{k}``: the hidden state after layer k at the verdict position (the last prompt
  token), the state the verdict is read from;
- and the model's own P(VETO) at that position (accuracy of VETO vs ALLOW, AUC), per pair.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from guard.types import Verdict

#: Contact rules with a held-out composition, and the anchor each switches on.
KEY_ANCHOR = {"stove_flammable": "stove", "hot_plate_flammable": "hot_plate"}
ITEMS = ("towel", "paper", "box", "pan", "pot")


def _scenes(split: str, n: int, seed: int, *, composition: bool) -> list[tuple[Any, Any]]:
    """(GuardItem, WorldItem) of contact scenes with an item on the key anchor.

    `train`: scans until `n` contact scenes (with or without an item on the anchor) are seen;
    `test_ood`: scans `n` items and keeps the composition ones.
    """
    from guard.world import WorldConfig, iter_items
    from training.data import world_items

    cfg = WorldConfig()
    held = set(cfg.held_out_pairs)
    out: list[tuple[Any, Any]] = []
    seen = 0
    for w in iter_items(split, n if composition else 50 * n, seed=seed, config=cfg):
        if w.rule not in KEY_ANCHOR or (composition and w.ood != "composition"):
            continue
        seen += 1
        if not composition and seen > n:
            break
        pair = _key_pair(w.scene, w.rule)
        if pair[1] is None:  # an empty anchor: no item to read
            continue
        # the split's promise: held-out pairs are the key of every composition item, never
        # a train pair (else the "held-out" accuracy below would measure nothing)
        assert (pair in held) == composition, (w.id, pair)
        g = world_items(split, 1, seed=seed, start=w.index, config=cfg)[0]
        assert g.id == w.id and g.label == w.label
        out.append((g, w))
    return out


def _key_pair(scene: Any, rule: str) -> tuple[str, str | None]:
    anchors = scene.find(KEY_ANCHOR[rule])
    assert len(anchors) == 1, anchors  # distractor anchors never repeat a present kind
    item = scene.item(anchors[0].cell)
    return anchors[0].kind, None if item is None else item.kind


def _key_token(scene: Any, rule: str) -> int:
    r, c = scene.find(KEY_ANCHOR[rule])[0].cell
    return int(r * scene.cols + c)


def _check_cell_order(model: Any, builder: Any, image: Any, rows: int, cols: int) -> list[int]:
    """For each cell in raster order, the merged token that moves most when the cell is
    painted over: [0, 1, ..., 15] when token k is cell (k // cols, k % cols)."""
    import torch

    def tokens(img: Any) -> np.ndarray:
        enc = builder.encode_images([img])
        with torch.inference_mode():
            v = model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"])
        return np.asarray(v.pooler_output[0].float().numpy())

    base = tokens(image)
    arr = np.asarray(image).copy()
    ch, cw = arr.shape[0] // rows, arr.shape[1] // cols
    moved = []
    for r in range(rows):
        for c in range(cols):
            a = arr.copy()
            a[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = 255 - a[r * ch:(r + 1) * ch,
                                                                   c * cw:(c + 1) * cw]
            from PIL import Image

            d = np.linalg.norm(tokens(Image.fromarray(a)) - base, axis=1)
            moved.append(int(d.argmax()))
    return moved


def _features(model: Any, processor: Any, items: list[Any], key_tok: list[int]
              ) -> dict[str, np.ndarray]:
    import torch

    from training.collators import GuardSFTCollator
    from training.data import sft_rows
    from training.processor import input_builder

    col = GuardSFTCollator(input_builder(processor, model.config))
    tok = processor.tokenizer
    veto = tok.encode(Verdict.VETO.word, add_special_tokens=False)[0]
    allow = tok.encode(Verdict.ALLOW.word, add_special_tokens=False)[0]
    image_id = int(model.config.image_token_id)
    out: dict[str, list[np.ndarray]] = {}
    for row, kt in zip(sft_rows(items), key_tok, strict=True):
        enc = col.builder.from_messages(row["prompt"], [row["image"]])
        pos = (enc["input_ids"][0] == image_id).nonzero()[:, 0]
        with torch.inference_mode():
            vis = model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"])
            res = model(**enc, output_hidden_states=True)
        v = vis.pooler_output[0].float()
        assert len(pos) == v.shape[0]  # one placeholder per merged token, in token order
        out.setdefault("cell_token", []).append(v[kt].numpy())
        out.setdefault("image_mean", []).append(v.mean(0).numpy())
        for k, h in enumerate(res.hidden_states):
            out.setdefault(f"cell_L{k}", []).append(h[0, pos[kt]].float().numpy())
            out.setdefault(f"verdict_L{k}", []).append(h[0, -1].float().numpy())
        p = torch.softmax(res.logits[0, -1].float(), -1)
        out.setdefault("p_veto", []).append(p[veto].numpy())
        out.setdefault("p_allow", []).append(p[allow].numpy())
    return {k: np.stack(v) for k, v in out.items()}


def _clf() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))


def _probe(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
           pairs_te: list[str], new_te: list[tuple[str, ...]] | None = None) -> dict[str, Any]:
    """In-distribution 5-fold accuracy, held-out accuracy, and per held-out pair what the
    probe reads (its predicted classes).

    With `new_te` (per test item, the items never seen on its anchor in train) also the
    forced choice among those: in train every item but the towel lies on one anchor only,
    so a free 5-way readout can lean on the anchor (a hot plate "means" box or pot); the
    forced choice asks only whether a box on the stove reads more box than pot.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    iid = float(cross_val_score(_clf(), x_tr, y_tr, cv=cv, scoring="accuracy").mean())
    clf = _clf().fit(x_tr, y_tr)
    pred = clf.predict(x_te)
    per_pair: dict[str, dict[str, int]] = {}
    for p, yp in zip(pairs_te, pred, strict=True):
        d = per_pair.setdefault(p, {})
        d[str(yp)] = d.get(str(yp), 0) + 1
    out = {"iid_cv": round(iid, 3), "held_out": round(float((pred == y_te).mean()), 3),
           "held_out_reads": per_pair}
    if new_te is not None:
        classes = [str(c) for c in clf.classes_]
        proba = clf.predict_proba(x_te)
        forced = [max(cands, key=lambda c: proba[i, classes.index(c)])
                  for i, cands in enumerate(new_te)]
        out["held_out_forced"] = round(float((np.array(forced) == y_te).mean()), 3)
    return out


def _verdict(f: dict[str, np.ndarray], y: np.ndarray, pairs: list[str]) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    veto = f["p_veto"] > f["p_allow"]
    return {"acc": round(float((veto == y.astype(bool)).mean()), 3),
            "auc": round(float(roc_auc_score(y, f["p_veto"])), 3),
            "mean_p_veto": {p: round(float(f["p_veto"][[q == p for q in pairs]].mean()), 3)
                            for p in sorted(set(pairs))}}


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from training.evaluate import load_for_eval
    from training.processor import input_builder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="guard/models/hazardworld-small")
    p.add_argument("--n-train", type=int, default=800, help="train contact scenes to scan")
    p.add_argument("--n-test", type=int, default=1024, help="test_ood items to scan")
    p.add_argument("--seed", type=int, default=77)
    p.add_argument("--test-seed", type=int, default=2000)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.test_seed == 1000:
        p.error("--test-seed 1000 is the test seed; probe on a validation seed")
    torch.set_num_threads(2)
    t0 = time.time()

    train = _scenes("train", args.n_train, args.seed, composition=False)
    test = _scenes("test_ood", args.n_test, args.test_seed, composition=True)
    rep: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    weights = Path(args.model) / "model.safetensors"
    if weights.is_file():
        rep["model_sha256_12"] = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]

    from guard.world import WorldConfig

    held = WorldConfig().held_out_pairs
    sets: dict[str, dict[str, Any]] = {}
    for name, rows in (("train", train), ("held_out", test)):
        pairs = [_key_pair(w.scene, w.rule) for _, w in rows]
        kinds = [str(it) for _, it in pairs]
        flam = np.array([g.label == "unsafe" for g, _ in rows], dtype=int)
        # the label is the flammability of the item on the key anchor, nothing else
        assert all((k in ("towel", "paper", "box")) == bool(t)
                   for k, t in zip(kinds, flam, strict=True))
        sets[name] = {"items": [g for g, _ in rows], "flam": flam, "kind": np.array(kinds),
                      "pair": [f"{a}+{i}" for a, i in pairs],
                      "key_tok": [_key_token(w.scene, w.rule) for _, w in rows],
                      "new": [tuple(sorted(i for a2, i in held if a2 == a)) for a, _ in pairs]}
        rep[f"{name}_pairs"] = dict(sorted(Counter(sets[name]["pair"]).items()))

    model, processor = load_for_eval(args.model)
    torch.manual_seed(0)
    rand = Qwen2_5_VLForConditionalGeneration._from_config(model.config).eval()
    builder = input_builder(processor, model.config)
    first = train[0][1].scene
    rep["cell_order_check"] = {
        "expected": list(range(first.rows * first.cols)),
        "trained": _check_cell_order(model, builder, train[0][0].image, first.rows, first.cols),
        "random": _check_cell_order(rand, builder, train[0][0].image, first.rows, first.cols)}

    tr, te = sets["train"], sets["held_out"]
    for name, m in (("trained", model), ("random", rand)):
        f_tr = _features(m, processor, tr["items"], tr["key_tok"])
        f_te = _features(m, processor, te["items"], te["key_tok"])
        r: dict[str, Any] = {}
        for feat in [k for k in f_tr if not k.startswith("p_")]:
            r[feat] = {
                "flammable": _probe(f_tr[feat], tr["flam"], f_te[feat], te["flam"], te["pair"]),
                "item": _probe(f_tr[feat], tr["kind"], f_te[feat], te["kind"], te["pair"],
                               te["new"])}
        r["p_veto"] = {"train": _verdict(f_tr, tr["flam"], tr["pair"]),
                       "held_out": _verdict(f_te, te["flam"], te["pair"])}
        rep[name] = r
    rep["wall_s"] = round(time.time() - t0, 1)
    text = json.dumps(rep, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
