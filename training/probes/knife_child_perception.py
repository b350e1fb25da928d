"""Perception diagnostic for the knife-near-child rule: is "a child is in the room" in the
judge's features at all, and where is it lost? Forward passes only (a few minutes on 2 cores).

    python -m training.probes.knife_child_perception --model guard/models/hazardworld-small \
        --n 400 --seed 77 [--png-dir DIR] [--out report.json]

On `n` knife-scene items of `train` at world seed `seed` (validation: never the test seed), for
the given model and for a random-weight model of the same config, it fits held-out linear
probes (logistic regression, 5-fold) for child present vs not on:

- ``cell_token``: the merged vision token of the key person's cell (the child, or the adult /
  cat look-alike in its place): can the tower tell a child from a look-alike where it stands?
- ``token_max``: a per-token child detector (linear, fit on half the scenes), max over the
  scene's 16 tokens, on the other half: presence as one attention head focused on it reads it;
- ``image_mean``: the 16 vision tokens averaged (presence anywhere, position-free);
- ``image_flat``: the 16 vision tokens concatenated;
- ``verdict_L{k}``: the language model's hidden state after layer k at the verdict position
  (the last prompt token), the state the verdict is read from;
- and the model's own P(VETO) at that position (AUC against the label).

It also reports the pixel footprint (which merged token each person covers), checks that the
training path's pixels equal the stock image processor's, and with `--png-dir` writes one
frame per class (child; adult look-alike) at 4x for a look.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from guard.types import Verdict


def _items(n: int, seed: int) -> tuple[list[Any], list[Any]]:
    from guard.world import WorldConfig, iter_items
    from training.data import world_items

    cfg = WorldConfig(rules=("knife_child",))
    return world_items("train", n, seed=seed, config=cfg), list(
        iter_items("train", n, seed=seed, config=cfg))


def _key_cell(scene: Any) -> tuple[tuple[int, int] | None, str]:
    """The cell of the child, else of a look-alike (not the asking adult), and its kind."""
    persons = [o for o in scene.objects if o.kind in ("child", "adult", "cat")]
    for o in persons:
        if o.kind == "child":
            return o.cell, "child"
    adults = [o for o in persons if o.kind == "adult"]
    extra = [o for o in persons if o.kind == "cat"] or adults[1:]
    return (extra[0].cell, extra[0].kind) if extra else (None, "none")


def _probe(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return float(cross_val_score(clf, x, y, cv=5, scoring="accuracy").mean())


def _token_max_probe(vision: np.ndarray, child_cells: list[set[int]], y: np.ndarray) -> float:
    """A per-token child detector (fit on half the scenes' tokens), max over a scene's tokens,
    thresholded at 0.5 on the other half: what one attention head focused on "child" reads."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, t, _ = vision.shape
    half = n // 2
    tok_y = np.array([[k in child_cells[i] for k in range(t)] for i in range(n)], dtype=int)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(vision[:half].reshape(half * t, -1), tok_y[:half].reshape(-1))
    score = clf.predict_proba(vision[half:].reshape((n - half) * t, -1))[:, 1]
    pred = score.reshape(n - half, t).max(1) > 0.5
    return float((pred == y[half:].astype(bool)).mean())


def _features(model: Any, processor: Any, items: list[Any]) -> dict[str, np.ndarray]:
    import torch

    from training.collators import GuardSFTCollator
    from training.data import sft_rows
    from training.processor import input_builder

    col = GuardSFTCollator(input_builder(processor, model.config))
    tok = processor.tokenizer
    veto = tok.encode(Verdict.VETO.word, add_special_tokens=False)[0]
    out: dict[str, list[np.ndarray]] = {}
    for row in sft_rows(items):
        enc = col.builder.from_messages(row["prompt"], [row["image"]])
        with torch.inference_mode():
            vis = model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"])
            res = model(**enc, output_hidden_states=True)
        out.setdefault("vision", []).append(vis.pooler_output[0].float().numpy())
        for k, h in enumerate(res.hidden_states):
            out.setdefault(f"verdict_L{k}", []).append(h[0, -1].float().numpy())
        out.setdefault("p_veto", []).append(
            torch.softmax(res.logits[0, -1].float(), -1)[veto].numpy())
    return {k: np.stack(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score
    from transformers import Qwen2_5_VLForConditionalGeneration

    from training.evaluate import load_for_eval

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="guard/models/hazardworld-small")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=77)
    p.add_argument("--png-dir", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    items, world = _items(args.n, args.seed)
    y = np.array([it.label == "unsafe" for it in items], dtype=int)
    keys = [_key_cell(w.scene) for w in world]
    grid_w = int(world[0].scene.cols)  # merged tokens in raster order, one per cell at 112 px
    key_token = [None if c is None else c[0] * grid_w + c[1] for c, _ in keys]
    kinds = [k for _, k in keys]
    # the label is the child's presence, nothing else (what the probes below predict)
    assert all((k == "child") == bool(t) for k, t in zip(kinds, y, strict=True))
    rep: dict[str, Any] = {"n": len(items), "unsafe": int(y.sum()),
                           "key_kinds": {k: kinds.count(k) for k in sorted(set(kinds))}}

    model, processor = load_for_eval(args.model)
    torch.manual_seed(0)
    rand = Qwen2_5_VLForConditionalGeneration._from_config(model.config).eval()

    # the training path's pixels against the stock image processor's
    from training.processor import input_builder

    enc = input_builder(processor, model.config).encode_images([items[0].image])
    stock = processor.image_processor(images=[items[0].image], return_tensors="pt")
    rep["pixels_equal_stock"] = bool(torch.equal(enc["pixel_values"], stock["pixel_values"]))
    rep["image_grid_thw"] = enc["image_grid_thw"].tolist()

    if args.png_dir:
        args.png_dir.mkdir(parents=True, exist_ok=True)
        for want in ("child", "adult", "cat"):
            i = next((i for i, k in enumerate(kinds) if k == want), None)
            if i is not None:
                im = items[i].image
                im.resize((im.width * 4, im.height * 4), 0).save(
                    args.png_dir / f"{want}_{keys[i][0]}.png")

    for name, m in (("trained", model), ("random", rand)):
        f = _features(m, processor, items)
        r: dict[str, Any] = {}
        idx = [i for i, t in enumerate(key_token) if t is not None]
        cell_tok = np.stack([f["vision"][i, key_token[i]] for i in idx])
        r["cell_token"] = _probe(cell_tok, y[idx])
        r["cell_token_n"] = len(idx)
        child_cells = [{o.cell[0] * grid_w + o.cell[1] for o in w.scene.objects
                        if o.kind == "child"} for w in world]
        r["token_max"] = _token_max_probe(f["vision"], child_cells, y)
        r["image_mean"] = _probe(f["vision"].mean(1), y)
        r["image_flat"] = _probe(f["vision"].reshape(len(y), -1), y)
        for k in sorted(k for k in f if k.startswith("verdict_L")):
            r[k] = _probe(f[k], y)
        r["p_veto_auc"] = float(roc_auc_score(y, f["p_veto"]))
        r["p_veto_mean_unsafe_safe"] = [float(f["p_veto"][y == 1].mean()),
                                        float(f["p_veto"][y == 0].mean())]
        rep[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    print(json.dumps(rep, indent=1))
    if args.out:
        args.out.write_text(json.dumps(rep, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
