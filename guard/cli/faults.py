"""`guard faults`: run the fault matrix against your configuration and judge; print a table.

    guard faults                                   # the defaults: the embedded model
    guard faults --config my_robot.yaml --out runs/faults
    guard faults --backend scripted --classes clock,audit

Exit 1 on any silent allow, lost audit record, crash or hang; 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from guard.cli.check import add_judge_arguments

    add_judge_arguments(p, audit=False)  # the run keeps its own audit logs under --out
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where faults.json, table.md and the run's own audit logs go "
                   "(default: a new temporary folder)")
    p.add_argument("--classes", default=None, metavar="A,B",
                   help="fault classes to run (default: all): clock, non_finite, "
                   "hung_backend, slow_backend, late_answer, images, action_text, "
                   "unencodable, injection, audit")
    p.add_argument("--scenes", type=int, default=24, metavar="N",
                   help="synthetic-world scenes the injection cases start from (default 24)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guard.cli.check import load_judge_config
    from guard.errors import UsageError
    from guard.faults import CLASSES, default_scenes, run_matrix, temp_out

    config = load_judge_config(args)
    if config.model.id is None and config.model.backend in ("transformers", "onnx"):
        from guard.cli.demo import DEFAULT_MODEL_DIR

        config = config.with_overrides(**{"model.id": str(DEFAULT_MODEL_DIR)})
    classes = tuple(CLASSES)
    if args.classes:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        unknown = [c for c in classes if c not in CLASSES]
        if unknown:
            raise UsageError(f"--classes: unknown {', '.join(unknown)} "
                             f"(known: {', '.join(CLASSES)})")
    out = Path(args.out) if args.out else temp_out()

    def progress(o: object) -> None:
        from guard.faults import Outcome

        assert isinstance(o, Outcome)
        mark = "FAIL" if o.failed else "ok"
        print(f"  {mark:<4} {o.fault:<13} {o.case}: {o.verdict}/{o.status}", file=sys.stderr)

    print(f"guard faults: {config.model.backend} {config.model.id or ''} "
          f"policy {config.policy.fingerprint()}", file=sys.stderr)
    report = run_matrix(config, out, classes=classes, scenes=default_scenes(args.scenes),
                        progress=progress)
    print(report.table())
    print(f"\nresults: {out / 'faults.json'}", file=sys.stderr)
    if report.failed:
        print("guard faults: FAILED: a silent allow, lost record, crash or hang (see above)",
              file=sys.stderr)
        return 1
    return 0
