"""Probe evaluation of a model folder (run from the repository root):

- verdict accuracy on house-rule validation items (600 train-split items, world seed 77, a
  rule on every heating item), per kind: the rule applies to the picture, names another item,
  the item is unsafe anyway, or no rule (plain);
- `constitution_effect` on 256 `test_ood` items (world seed 1000), per held-out kind and label;
- plain verdict accuracy on the held-out compositions among them.

    python docs/experiment/house_rules/probe_eval.py MODEL_DIR
"""

import collections
import sys

import torch

from guard.world import WorldConfig
from training.constitution import load_constitution
from training.data import world_items
from training.evaluate import constitution_effect, evaluate, load_for_eval


def main() -> None:
    torch.set_num_threads(2)
    model, processor = load_for_eval(sys.argv[1])
    val = world_items("train", 600, seed=77, house_rules=1.0, house_rule_seed=1)
    kind = {i.id: i.meta.get("house_rule") or "plain" for i in val}
    _, results = evaluate(model, processor, val, batch_size=100, verdict_only=True)
    acc = collections.defaultdict(list)
    for r in results:
        acc[kind[r.id]].append(r.correct)
    print("house-rule val:", {k: (round(sum(v) / len(v), 3), len(v)) for k, v in acc.items()})
    items = world_items("test_ood", 256, seed=1000, config=WorldConfig.preset("default"))
    effect = constitution_effect(model, processor, items, load_constitution("hazardworld"),
                                 batch_size=64)
    print("constitution shift:", effect["mean_abs_shift"],
          {k: (g["mean_abs_shift"], g["p_veto_student"], g["p_veto_teacher"])
           for k, g in effect["groups"].items()})
    comp = [i for i in items if i.meta.get("ood") == "composition"]
    rep, _ = evaluate(model, processor, comp, batch_size=100, verdict_only=True)
    print("composition acc (plain):", rep["accuracy"], "r0", rep["r0"],
          "fv", rep["false_veto_rate"])


if __name__ == "__main__":
    main()
