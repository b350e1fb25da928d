"""`guard demo`: the guard at work on a synthetic episode, offline, in about a minute on a CPU.

    guard demo                          # the embedded default model, ./guard-demo/
    guard demo --out /tmp/demo --steps 12
    guard demo --model /tmp/tiny        # any judge model folder or hub id instead

Generates a short episode of the synthetic consequence world (`guard.world`: top-down frames,
a proposed action per scene, and the world's label for it), writes it as a JSONL episode under
DIR/episode/, judges it through the replay path (`guard replay`: the same Guard, policy and
audit log a robot uses), prints one line per proposal (action, label, verdict, status) and
where DIR/report.html and DIR/summary.json are.

The default model, `guard/models/hazardworld-small`, is a ~1 M-parameter Qwen2.5-VL trained
from scratch on the synthetic world only (its MODEL_CARD.md gives the recipe and measured
accuracy): it knows nothing about real kitchens. The first line of the output names the model
that judged.

Exit 0 when the episode was judged (whatever the verdicts), 1 when the model did not load,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: The embedded default model, shipped inside the package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "hazardworld-small"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="guard-demo", metavar="DIR",
                   help="output folder (default: ./guard-demo)")
    p.add_argument("--model", default=None, metavar="ID_OR_PATH",
                   help="judge model folder or hub id (default: the embedded "
                   "hazardworld-small model)")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="guard config (default: built-in defaults; the prompt template is the "
                   "one the model was trained with unless the config sets one)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="judge backend (overrides model.backend; default transformers)")
    p.add_argument("--steps", type=int, default=16, metavar="N",
                   help="scenes in the episode, one proposal each (default: 16)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="world seed (default: 0)")
    p.add_argument("--split", default="test_iid", choices=("test_iid", "test_ood"),
                   help="world split the scenes are drawn from (default: test_iid)")


def default_model() -> Path | None:
    """The embedded model folder, or None when this install does not have it."""
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").is_file() else None


def write_episode(out: Path, steps: int, seed: int, split: str) -> Path:
    """Write the demo's JSONL episode (PNG frames: the pixels the world rendered)."""
    import dataclasses

    from guard.replay.make_example import T0, example_items
    from guard.replay.writer import write_jsonl

    # The proposals as the example episodes carry them (tool name, description, arguments):
    # the guard renders them as every front end does (`ActionProposal.as_text`).
    shifted = [dataclasses.replace(i, t=round(i.t - T0, 6))
               for i in example_items(steps, seed, split)]
    return write_jsonl(out / "episode.jsonl", shifted, image_format="png")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from guard.errors import GuardError, UsageError

    if not 1 <= args.steps <= 1000:
        raise UsageError(f"--steps {args.steps}: must be 1..1000")
    if args.config is not None and not Path(args.config).is_file():
        raise UsageError(f"--config {args.config}: file not found")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")

    from guard.config import load_config

    config = load_config(args.config)
    if args.model is not None:
        model_id, which = args.model, f"{args.model} (given with --model)"
    elif args.config is not None and config.model.id is not None:
        model_id, which = config.model.id, f"{config.model.id} (from --config)"
    else:
        embedded = default_model()
        if embedded is None:
            raise UsageError(
                "the embedded default model (guard/models/hazardworld-small) is not in this "
                "install; pass a model with --model (e.g. 'guard tiny-model --arch qwen2_5_vl "
                "--out /tmp/tiny' then 'guard demo --model /tmp/tiny', random weights)")
        model_id = str(embedded)
        which = "hazardworld-small (embedded default, synthetic world only)"
    overrides: dict[str, object] = {"model.id": model_id, "audit.path": str(out / "audit.jsonl")}
    if args.backend is not None:
        overrides["model.backend"] = args.backend
    config = config.with_overrides(**overrides)

    out.mkdir(parents=True, exist_ok=True)
    print(f"model: {which}")
    try:
        episode = write_episode(out / "episode", args.steps, args.seed, args.split)
    except ImportError as exc:
        raise GuardError(f"the synthetic world needs the [world] extra: {exc}") from None
    print(f"episode: {args.steps} synthetic scenes ({args.split}, seed {args.seed}) in "
          f"{episode}")

    from guard.cli.check import open_guard
    from guard.replay.runner import replay

    with open_guard(config) as guard:
        result = replay(episode, out, guard=guard, progress=False)

    width = max((len(j.proposal.description or j.proposal.name) for j in result.judged),
                default=10)
    print(f"{'#':>3}  {'action':<{width}}  {'label':<6}  {'verdict':<8}  {'status':<10}  ok")
    for j in result.judged:
        d = j.decision
        action = j.proposal.description or j.proposal.name
        verdict = d.verdict.value
        ok = "-" if j.label is None else (
            "yes" if (j.label == "unsafe") == (verdict != "allow") else "NO")
        print(f"{j.index:>3}  {action:<{width}}  {j.label or '-':<6}  {verdict:<8}  "
              f"{d.status.value:<10}  {ok}")
    failed = sorted({j.decision.status.value for j in result.judged
                     if j.decision.status.value != "ok"})
    if failed:
        print(f"status {', '.join(failed)}: the judge gave no usable answer in time or in "
              "format, so the guard failed closed (veto); decisions.jsonl has the reason")
    s = result.summary
    v = s["verdicts"]
    print(f"{s['n_proposals']} proposals: {v['allow']} allow, {v['annotate']} annotate, "
          f"{v['veto']} veto")
    labels = s.get("labels")
    if labels:
        print(f"against the world's labels: recall on unsafe {_share(labels['recall_unsafe'])}, "
              f"R0 {_share(labels['r0'])}, false-veto rate {_share(labels['false_veto_rate'])}")
    print(f"report: {out / 'report.html'}")
    print(f"summary: {out / 'summary.json'}")
    print(f"decisions: {out / 'decisions.jsonl'}")
    return 0


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
