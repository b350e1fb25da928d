"""Where does learning the knife-near-child rule stall? A tight training loop on the verdict
token alone, fast enough for many steps on 2 cores.

    python -m training.probes.knife_child_fastloop --init embedded --world default \
        --steps 1500 [--freeze vision|lm] [--lr 1e-3] [--n-train 1536] [--out result.json]

Examples are encoded once, exactly as the SFT collator encodes them (`GuardSFTCollator`), cut
after the first answer token, with the loss on that token only (the verdict: VETO or ALLOW);
then plain AdamW over random batches, no trainer, no re-encoding. So thousands of steps cost
minutes, and every variant sees the same examples in the same order.

- ``--init embedded`` starts from the model at ``--model`` (default: the embedded model; it
  is only read), ``random`` from random weights of the same config (seed 0).
- ``--world default``: knife scenes of the default world (look-alikes: an adult or a cat where
  the child would be in 80% of safe scenes); ``easy``: no look-alike and no extra cat (a safe
  scene holds the asking adult only).
- ``--freeze vision`` trains the language model only (the merged image tokens stay what the
  tower gives); ``--freeze lm`` trains the vision tower and merger only.
- ``--cell-item-weight W`` adds an auxiliary loss: a linear head reads every merged image
  token (one per grid cell) and names the item lying in that cell (or none), weighted W
  against the verdict loss. It asks the tower to keep an item's identity whatever it lies on:
  the composition probe found the trained tower's token encodes (anchor, item) pairs instead,
  so a held-out pairing reads as its anchor. Reported as ``cell_item`` (every cell of the
  validation scenes), ``cell_item:composition`` (the key cell of held-out compositions: is
  a box on the stove named a box?) and ``cell_item_forced:composition`` (the same, choosing
  only among the items held out on that anchor, box or pot on the stove: chance 0.5).

Validation: 512 held-out knife items (world seed 77, `train` split, never a test seed),
accuracy of argmax(VETO, ALLOW) at the verdict position, every ``--eval-every`` steps.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from guard.types import Verdict
from guard.world.catalog import KINDS

#: Two more kinds on each side of both heat anchors (`WorldConfig.contact_items`).
_MORE_KINDS = {r: ("book", "basket", "kettle", "wok")
               for r in ("stove_flammable", "hot_plate_flammable")}

WORLDS: dict[str, dict[str, Any]] = {
    "easy": {"rules": ("knife_child",), "presence_decoy_rate": 0.0, "extra_hazard_rate": 0.0},
    "default": {"rules": ("knife_child",)},
    "all": {},  # every default rule, knife scenes a quarter of them
    # the same, an item on an anchor drawn in its own patch (`appearance.item_on_anchor`)
    "all_tray": {"appearance": {"item_on_anchor": "tray"}},
    # the same, with two more kinds on each side of both heat anchors (`contact_items`), so
    # that each anchor holds four flammable and three harmless kinds in train
    "all_tray_kinds": {"appearance": {"item_on_anchor": "tray"}, "contact_items": _MORE_KINDS},
    # the same with the item drawn almost as wide as its tray (about 13 px of the 14 px patch
    # at 112 px, against 7 px): more of the patch is the item's own pixels
    "all_tray_kinds_big": {"appearance": {"item_on_anchor": "tray", "tray_item_scale": 0.9},
                           "contact_items": _MORE_KINDS},
    # the same at 224 px: a cell is 2x2 merged image tokens, so the tray (the cell's top-left
    # quarter) is a merged token of its own, not mixed with the anchor's patches by the merger
    "all_tray_kinds_224": {"image_size": 224, "appearance": {"item_on_anchor": "tray"},
                           "contact_items": _MORE_KINDS},
    # both: at 224 px the tray is a merged token of its own, the item nearly fills it
    "all_tray_kinds_big_224": {"image_size": 224,
                               "appearance": {"item_on_anchor": "tray", "tray_item_scale": 0.9},
                               "contact_items": _MORE_KINDS},
}


def _encode(model: Any, processor: Any, items: list[Any], max_length: int | None = None,
            projection_rate: float = 0.0) -> list[dict[str, Any]]:
    from guard.backends.qwen_inputs import IGNORE_INDEX
    from training.collators import GuardSFTCollator
    from training.data import sft_rows
    from training.processor import input_builder

    col = GuardSFTCollator(input_builder(processor, model.config))
    tok = processor.tokenizer
    verdict_ids = {tok.encode(v.word, add_special_tokens=False)[0]
                   for v in (Verdict.VETO, Verdict.ALLOW)}
    out = []
    for row in sft_rows(items, action_format="tool_call_v1", projection_rate=projection_rate):
        enc = col.encode(row, row["completion"])
        answer = (enc["labels"][0] != IGNORE_INDEX).nonzero()[:, 0]
        first = int(answer[0])
        if row["answer_mode"] == "projection_first":
            # the projection's scene and effect lines, then the verdict: kept through it
            first = next(int(i) for i in answer if int(enc["labels"][0, i]) in verdict_ids)
        end = first + 1 if max_length is None else max(max_length, first + 1)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels"):
            enc[key] = enc[key][:, :end]
        enc["verdict_at"] = first
        enc["rule"] = row["target_rule"]
        enc["ood"] = row.get("ood")
        out.append(enc)
    return out


#: Per-cell item classes of the auxiliary head: 0 is an empty cell.
ITEM_CLASSES: tuple[str, ...] = ("", *(k.name for k in KINDS.values()
                                         if k.layer == "item"))


def _cell_items(split: str, n: int, seed: int, start: int, config: Any) -> list[dict[str, Any]]:
    """Per item of ``world_items(split, n, seed=seed, start=start)``: the item class of every
    cell in raster order (the merged tokens' order) and the key cell of a composition item."""
    import torch

    from guard.world import iter_items
    from training.probes.composition_perception import KEY_ANCHOR

    out = []
    for w in iter_items(split, n, seed=seed, config=config, start=start):
        cls = []
        for cell in w.scene.cells():
            it = w.scene.item(cell)
            cls.append(ITEM_CLASSES.index(it.kind) if it is not None else 0)
        key, new_here = None, None
        if w.ood == "composition":
            anchor = KEY_ANCHOR.get(w.rule)
            if anchor is not None:
                r, c = w.scene.find(anchor)[0].cell
                key = r * w.scene.cols + c
                # the items held out on this anchor (box or pot on the stove): a forced
                # choice among them cannot lean on the anchor
                new_here = [ITEM_CLASSES.index(i) for a, i in config.held_out_pairs
                            if a == anchor]
        out.append({"cells": torch.tensor(cls), "key_cell": key, "new_here": new_here})
    return out


class _CellItemHead:
    """The auxiliary head and the hook that hands it the tower's merged tokens."""

    def __init__(self, model: Any) -> None:
        import torch

        visual = model.model.visual
        dim = int(model.config.text_config.hidden_size)
        self.linear = torch.nn.Linear(dim, len(ITEM_CLASSES))
        self.tokens: Any = None
        visual.register_forward_hook(self._grab)

    def _grab(self, _module: Any, _inputs: Any, output: Any) -> None:
        self.tokens = output.pooler_output

    def logits(self, n_images: int) -> Any:
        """(images, cells, classes) for the last forward pass."""
        return self.linear(self.tokens).reshape(n_images, -1, len(ITEM_CLASSES))


def _accuracy(model: Any, batch_fn: Any, data: list[dict[str, Any]], veto: int,
              allow: int, head: _CellItemHead | None = None) -> dict[str, float]:
    import torch

    right: dict[str, list[int]] = {}
    with torch.inference_mode():
        for s in range(0, len(data), 64):
            chunk = data[s:s + 64]
            b = batch_fn(chunk)
            labels = b.pop("labels")
            logits = model(**b).logits
            if head is not None:
                cell_logits = head.logits(len(chunk))
                got_cells = cell_logits.argmax(-1)
                for i, e in enumerate(chunk):
                    ok = (got_cells[i] == e["cells"]).tolist()
                    right.setdefault("cell_item", []).extend(int(x) for x in ok)
                    if e["key_cell"] is not None:
                        k, want = e["key_cell"], int(e["cells"][e["key_cell"]])
                        right.setdefault("cell_item:composition", []).append(int(ok[k]))
                        among = e["new_here"]
                        pick = among[int(cell_logits[i, k, among].argmax())]
                        right.setdefault("cell_item_forced:composition", []).append(
                            int(pick == want))
            for i, e in enumerate(chunk):
                pos = int(e["verdict_at"]) - 1  # the position that predicts the verdict
                want = int(labels[i, pos + 1])
                got = veto if logits[i, pos, veto] > logits[i, pos, allow] else allow
                key = f"ood:{e['ood']}" if e.get("ood") else str(e["rule"])
                right.setdefault(key, []).append(int(got == want))
    every = [r for k, rs in right.items() if not k.startswith(("ood:", "cell_item"))
             for r in rs]
    return {"all": round(sum(every) / len(every), 3),
            **{k: round(sum(v) / len(v), 3) for k, v in sorted(right.items())}}


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from guard.world import WorldConfig
    from training.collators import _batch
    from training.data import world_items
    from training.evaluate import load_for_eval

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="guard/models/hazardworld-small")
    p.add_argument("--init", choices=("embedded", "random"), default="embedded")
    p.add_argument("--world", choices=tuple(WORLDS), default="default")
    p.add_argument("--val-world", choices=tuple(WORLDS),
                   help="validate on this world (default: the training world)")
    p.add_argument("--extra-knife", type=int, default=0,
                   help="add this many knife-only items to the training items (oversampling"
                        " knife scenes in an --world all mix)")
    p.add_argument("--freeze", choices=("vision", "lm"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay", action="store_true",
                   help="decay the lr linearly to 0 at --steps (default: constant after the"
                        " warm-up), so the last evaluation does not catch the rules on a dip")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW's decoupled weight decay (a pull toward the simpler rule that"
                        " fits, against memorised pairs)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-train", type=int, default=1536)
    p.add_argument("--max-length", type=int,
                   help="keep the answer up to this many tokens in all, as the SFT runs'"
                        " max_length does (the loss then averages over those answer tokens);"
                        " default: the verdict token only")
    p.add_argument("--clip", type=float, help="clip the gradient norm (the HF Trainer: 1.0)")
    p.add_argument("--cell-item-weight", type=float, default=0.0,
                   help="weight of the auxiliary loss naming the item in every cell from its"
                        " merged image token (0: off)")
    p.add_argument("--projection-rate", type=float, default=0.0,
                   help="share of training rows in the projection-first answer mode (the"
                        " world's scene and effect lines, then the verdict: kept through the"
                        " verdict); validation stays verdict first. Score the saved model's"
                        " own projections with `training.evaluate --answer-mode"
                        " projection_first --projection-effect`")
    p.add_argument("--name-every-item", action="store_true",
                   help="projections also name every other item lying on an anchor, so the"
                        " model learns an item's name whatever it lies on (training rows)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the batch order and any new weights (the items stay the same)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--ood-seed", type=int,
                   help="also score `test_ood` items of this world seed (512; per held-out kind"
                        " as ood:composition and ood:layout); never the test seed 1000")
    p.add_argument("--out", type=Path)
    p.add_argument("--save", type=Path, help="save the trained model and processor here"
                   " (a later run continues it with --model)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)

    model, processor = load_for_eval(args.model)
    if args.init == "random":
        model = Qwen2_5_VLForConditionalGeneration._from_config(model.config)
    tok = processor.tokenizer
    veto, allow = (tok.encode(v.word, add_special_tokens=False)[0]
                   for v in (Verdict.VETO, Verdict.ALLOW))
    cfg = WorldConfig(**WORLDS[args.world])
    t0 = time.time()
    train_kw = {"bare_phrase_rate": 0.15, "unnamed_tool_rate": 0.15,
                "name_every_item": args.name_every_item}
    sources: list[tuple[str, int, int, int, Any, dict[str, Any]]] = [
        ("train", args.n_train, 0, 300_000, cfg, train_kw)]
    if args.extra_knife:
        sources.append(("train", args.extra_knife, 0, 400_000,
                        WorldConfig(**WORLDS["default"]), train_kw))
    val_cfg = WorldConfig(**WORLDS[args.val_world or args.world])
    n_train_sources = len(sources)
    sources.append(("train", 512, 77, 0, val_cfg, {}))
    if args.ood_seed is not None:
        if args.ood_seed == 1000:
            p.error("--ood-seed 1000 is the test seed; validate on another")
        sources.append(("test_ood", 512, args.ood_seed, 0, val_cfg, {}))
    encoded = []
    for k, (split, n, seed, start, wcfg, kw) in enumerate(sources):
        enc = _encode(model, processor, world_items(split, n, seed=seed, start=start,
                                                    config=wcfg, **kw),
                      args.max_length if k < n_train_sources else None,
                      args.projection_rate if k < n_train_sources else 0.0)
        if args.cell_item_weight:
            for e, c in zip(enc, _cell_items(split, n, seed, start, wcfg), strict=True):
                e.update(c)
        encoded.append(enc)
    train = [e for enc in encoded[:n_train_sources] for e in enc]
    val = [e for enc in encoded[n_train_sources:] for e in enc]
    pad = tok.pad_token_id

    def batch_fn(chunk: list[dict[str, Any]]) -> dict[str, Any]:
        return _batch(chunk, pad)

    inner = model.model
    frozen = {"vision": inner.visual, "lm": inner.language_model}.get(args.freeze or "")
    if frozen is not None:
        for prm in frozen.parameters():
            prm.requires_grad_(False)
    head = _CellItemHead(model) if args.cell_item_weight else None
    params = [q for q in model.parameters() if q.requires_grad]
    if head is not None:
        params += list(head.linear.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    def lr_factor(s: int) -> float:
        warm = min(1.0, (s + 1) / 20)
        return warm * (max(0.0, 1.0 - s / args.steps) if args.lr_decay else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    rng = random.Random(args.seed)
    log: list[dict[str, Any]] = [{"step": 0, "val_acc": _accuracy(
        model.eval(), batch_fn, val, veto, allow, head)}]
    print(json.dumps(log[-1]), flush=True)
    model.train()
    losses: list[float] = []
    t1 = time.time()
    for step in range(1, args.steps + 1):
        chunk = rng.sample(train, args.batch)
        loss = model(**batch_fn(chunk)).loss
        if head is not None:
            cells = torch.stack([e["cells"] for e in chunk])
            cell_logits = head.logits(len(chunk))
            # one merged token per grid cell, raster order (checked by composition_perception)
            assert cell_logits.shape[1] == cells.shape[1], (cell_logits.shape, cells.shape)
            aux = torch.nn.functional.cross_entropy(cell_logits.flatten(0, 1), cells.flatten())
            loss = loss + args.cell_item_weight * aux
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            entry = {"step": step, "train_loss": round(sum(losses) / len(losses), 4),
                     "val_acc": _accuracy(model.eval(), batch_fn, val, veto, allow, head),
                     "s": round(time.time() - t1, 1)}
            model.train()
            losses = []
            log.append(entry)
            print(json.dumps(entry), flush=True)
    res = {"init": args.init, "world": args.world, "val_world": args.val_world or args.world,
           "freeze": args.freeze, "lr": args.lr, "lr_decay": args.lr_decay,
           "weight_decay": args.weight_decay,
           "max_length": args.max_length,
           "clip": args.clip, "extra_knife": args.extra_knife,
           "cell_item_weight": args.cell_item_weight, "ood_seed": args.ood_seed,
           "projection_rate": args.projection_rate, "seed": args.seed,
           "name_every_item": args.name_every_item,
           "batch": args.batch, "n_train": args.n_train, "encode_s": round(t1 - t0, 1),
           "log": log}
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    if args.save:
        model.save_pretrained(str(args.save))
        processor.save_pretrained(str(args.save))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
