"""Shortcut baselines: how much of the label can be had without looking at the scene properly.

- `text_only_baseline`: a bag-of-words logistic regression and a per-query majority vote, trained
  on the action text of train items, scored on test items. The world is built so this is at
  chance: if it is not, the text gives the label away.
- `object_bag_baseline`: a per-action logistic regression on *which objects are in the scene*
  (counts per kind, no positions, no states). This is the "object-counting heuristic" small
  models settle on (`guard/world/README.md`, "What a small model learns"). It should be near
  chance for contact and state rules, and high for presence rules, where presence is the rule.

Both work on items.jsonl records (dicts) or on `WorldItem`s; numpy only.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from guard.world.catalog import KINDS

_TOKEN = re.compile(r"[a-z]+")


def _get(item: Any, key: str) -> Any:
    if isinstance(item, Mapping):
        return item[key]
    if key == "scene":
        return item.scene.to_dict()
    if key == "target_rule":
        return item.rule
    return getattr(item, key)


def _labels(items: Sequence[Any]) -> np.ndarray:
    return np.array([1.0 if _get(it, "label") == "unsafe" else 0.0 for it in items])


def _logreg(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 500,
            lr: float = 0.5) -> np.ndarray:
    """Full-batch gradient descent on the logistic loss (a bias column is appended)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) / len(y) + l2 * w
        w -= lr * grad
    return w


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    xb = np.hstack([x, np.ones((len(x), 1))])
    out: np.ndarray = (xb @ w > 0).astype(float)
    return out


def text_only_baseline(train: Sequence[Any], test: Sequence[Any]) -> dict[str, float]:
    """Accuracy of text-only classifiers: the label must not be readable from the action text.

    Args:
        train: Items (records or `WorldItem`s) with `query` and `label`.
        test: Items to score.

    Returns:
        `bow_logreg` (bag-of-words logistic regression accuracy on test), `majority_per_query`
        (each query text's majority label in train; unseen texts get the global majority),
        `test_unsafe_share` (accuracy of a constant guess is max of it and 1 minus it),
        `n_train`, `n_test`.
    """
    vocab = sorted({t for it in train for t in _TOKEN.findall(_get(it, "query").lower())})
    index = {t: i for i, t in enumerate(vocab)}

    def feats(items: Sequence[Any]) -> np.ndarray:
        x = np.zeros((len(items), len(vocab)))
        for r, it in enumerate(items):
            for t in _TOKEN.findall(_get(it, "query").lower()):
                if t in index:
                    x[r, index[t]] += 1.0
        return x

    y_tr, y_te = _labels(train), _labels(test)
    w = _logreg(feats(train), y_tr)
    bow = float((_predict(w, feats(test)) == y_te).mean()) if len(test) else float("nan")

    votes: dict[str, list[float]] = defaultdict(list)
    for it, y in zip(train, y_tr, strict=True):
        votes[_get(it, "query")].append(y)
    overall = float(y_tr.mean() >= 0.5) if len(y_tr) else 0.0
    # ties go to "unsafe", which is what a guard would pick
    maj = {q: float(np.mean(v) >= 0.5) for q, v in votes.items()}
    pred = np.array([maj.get(_get(it, "query"), overall) for it in test])
    majority = float((pred == y_te).mean()) if len(test) else float("nan")
    return {
        "bow_logreg": bow,
        "majority_per_query": majority,
        "test_unsafe_share": float(y_te.mean()) if len(test) else float("nan"),
        "n_train": float(len(train)),
        "n_test": float(len(test)),
    }


def object_bag_baseline(train: Sequence[Any], test: Sequence[Any]) -> dict[str, Any]:
    """Accuracy of a per-action classifier that sees which objects exist, not where or how.

    Args:
        train: Items with `query`/`action`, `label` and `scene`.
        test: Items to score.

    Returns:
        `overall` accuracy and `per_rule` accuracy on test (by each item's target rule).
    """
    kinds = sorted(KINDS)
    col = {k: i for i, k in enumerate(kinds)}

    def feats(it: Any) -> np.ndarray:
        v = np.zeros(len(kinds))
        for k, c in Counter(o["kind"] for o in _get(it, "scene")["objects"]).items():
            v[col[k]] = c
        return v

    by_action: dict[str, list[Any]] = defaultdict(list)
    for it in train:
        by_action[_get(it, "action")].append(it)
    models = {a: _logreg(np.stack([feats(i) for i in its]), _labels(its))
              for a, its in by_action.items()}
    hits: dict[str, list[bool]] = defaultdict(list)
    for it in test:
        w = models.get(_get(it, "action"))
        guess = float(_predict(w, feats(it)[None, :])[0]) if w is not None else 1.0
        hits[_get(it, "target_rule")].append(guess == _labels([it])[0])
    every = [h for v in hits.values() for h in v]
    return {
        "overall": float(np.mean(every)) if every else float("nan"),
        "per_rule": {r: float(np.mean(v)) for r, v in sorted(hits.items())},
    }
