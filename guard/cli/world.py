"""`guard world generate`: items of the synthetic consequence world (PNG frames + items.jsonl in
the schema the `ood-mmsafe` suite reads, and metadata.jsonl + a dataset card, so that
``datasets.load_dataset("imagefolder", data_dir=DIR)`` gives the images with their labels).

    guard world generate --split train --n 2000 --out data/train --seed 0
    guard world generate --split test_ood --n 500 --out data/test_ood --preset hard
    guard world generate --split test_iid --n 200 --start 1000000000 --out data/demo_scenes
        # the scenes `guard demo --steps 200` and the example episodes judge, as items
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="write N items of a split",
                       description="Write N items: frames, items.jsonl, world.json, and "
                       "metadata.jsonl + README.md for datasets.load_dataset.")
    g.add_argument("--split", required=True, choices=["train", "test_iid", "test_ood"])
    g.add_argument("--n", required=True, type=int, metavar="N", help="number of items")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    g.add_argument("--start", type=int, default=0, metavar="I",
                   help="index of the first item (default 0; 1000000000: the scenes of the "
                   "world's episodes, which `guard demo` and the example replays judge)")
    g.add_argument("--preset", default="default", choices=["default", "easy", "hard"],
                   help="difficulty preset (default: learnable by a small model on CPU)")
    g.add_argument("--image-size", default=None, metavar="PX|WxH",
                   help="frame size, e.g. 112 (default), 224 or 640x480")


def run(args: argparse.Namespace) -> int:
    from guard.errors import UsageError

    if args.n < 0:
        raise UsageError(f"--n {args.n}: must be >= 0")
    if args.start < 0:
        raise UsageError(f"--start {args.start}: must be >= 0")
    from pydantic import ValidationError

    from guard.world import WorldConfig, generate

    config = WorldConfig.preset(args.preset)
    if args.image_size:
        try:
            w, _, h = args.image_size.lower().partition("x")
            size = (int(w), int(h)) if h else int(w)
        except ValueError:
            raise UsageError(f"--image-size {args.image_size!r}: use 224 or 640x480") from None
        try:
            config = config.model_copy(update={"image_size": size})
            config = type(config).model_validate(config.model_dump())
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise UsageError(f"--image-size {args.image_size!r}: {msg}") from None
    print(generate(args.split, args.n, args.out, seed=args.seed, config=config,
                   start=args.start))
    return 0
