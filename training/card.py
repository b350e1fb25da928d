"""Hub-ready model cards: a model folder's ``README.md``, written from what the folder records.

    python -m training.card runs/sft/model                   # (re)write the card
    python -m training.evaluate --model runs/sft/model --split test_iid --n 512 \\
        --verdict-only --record                              # measure, record, rewrite the card

A card is written through ``huggingface_hub``'s card API (`ModelCardData`, `EvalResult`,
`ModelCard`): YAML front matter with license, base model, tags, pipeline tag, library name and a
``model-index`` of the metrics measured, then a body saying how the model was trained, how to use
it with the guard and what it scored. Every number comes from a record in the folder, never
from the caller:

    training_run_config.yaml  the run config (`training.run` writes it beside every model)
    train_results.json        `TRAIN_RESULTS_FILE`: steps, final training loss, wall time and
                              the trainer's last evaluation, from trl's log history (`save`)
    eval_results.json         `EVAL_RESULTS_FILE`: `training.evaluate` reports, one per split
                              and setting (`record_evaluation`)

The license is, in order: the one given, the folder's existing card's (a rewritten card keeps
its license), the base model folder's card's, Apache-2.0 for a base of random weights built by
``guard tiny-model`` (this project's license), else ``unknown``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CARD_FILE = "README.md"
TRAIN_RESULTS_FILE = "train_results.json"
EVAL_RESULTS_FILE = "eval_results.json"
#: The license of what this project builds from nothing (random weights, its own tokenizer).
PROJECT_LICENSE = "apache-2.0"
#: The metrics of a `training.evaluate` report the card carries: key, hub metric type, name.
EVAL_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "accuracy", "verdict accuracy"),
    ("r0", "r0", "R0 (unsafe items allowed)"),
    ("false_veto_rate", "false_veto_rate", "false-veto rate (safe items stopped)"),
    ("parse_fail_rate", "parse_fail_rate", "unparseable answers"),
)
_TASK = ("image-text-to-text", "Action safety verdict")
_WORLD_DATASET = "synthetic-consequence-world"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _run_config(model_dir: Path) -> dict[str, Any] | None:
    from guard.prompting.action import TRAINING_RUN_CONFIG

    path = model_dir / TRAINING_RUN_CONFIG
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def _hub_id(ref: str | None) -> str | None:
    """`ref` when it names a hub repository rather than a local folder."""
    if not ref or Path(ref).exists() or not _HUB_ID.match(ref):
        return None
    return ref


def _card_license(folder: Path) -> str | None:
    card = folder / CARD_FILE
    if not card.is_file():
        return None
    from huggingface_hub import ModelCard

    lic = ModelCard.load(card).data.license
    return lic if isinstance(lic, str) and lic else None


def _card_name(folder: Path) -> str | None:
    card = folder / CARD_FILE
    if not card.is_file():
        return None
    from huggingface_hub import ModelCard

    name = ModelCard.load(card).data.model_name
    return name if isinstance(name, str) and name else None


def resolve_license(model_dir: Path, base: str | None, explicit: str | None = None) -> str:
    """The card's license (order in the module docstring)."""
    if explicit:
        return explicit
    own = _card_license(model_dir)
    if own:
        return own
    if base and Path(base).is_dir():
        inherited = _card_license(Path(base))
        if inherited:
            return inherited
        if (Path(base) / "guard_tiny.json").is_file():
            return PROJECT_LICENSE
    return "unknown"


def train_results(log_history: list[dict[str, Any]], global_step: int) -> dict[str, Any]:
    """What a training run measured, from trl's ``state.log_history``: the final summary
    (training loss, wall time, epoch) and the last evaluation the trainer ran, if any."""
    out: dict[str, Any] = {"global_step": global_step}
    final = next((row for row in reversed(log_history) if "train_loss" in row), None)
    if final is not None:
        for key in ("train_loss", "train_runtime", "epoch"):
            if key in final:
                out[key] = final[key]
    evals = [row for row in log_history if "eval_loss" in row]
    if evals:
        out["eval"] = {k: v for k, v in evals[-1].items() if k.startswith("eval_") or k == "step"}
    return out


def record_evaluation(model_dir: str | Path, report: dict[str, Any], *, split: str, seed: int,
                      n: int, preset: str = "default", verdict_only: bool,
                      action_format: str | None = None, template: str | None = None,
                      command: str | None = None, write_card: bool = True) -> Path:
    """Add a `training.evaluate` report to the folder's `EVAL_RESULTS_FILE` and rewrite its card.

    A report of the same split, seed, size, preset and mode replaces the earlier one.

    Args:
        model_dir: The model folder.
        report: `training.evaluate.evaluate`'s report (summary, ``per_rule``, ``per_ood``).
        split: The world split evaluated.
        seed: The world seed of the items.
        n: The number of items.
        preset: The world preset.
        verdict_only: Whether only the verdict line was generated and scored.
        action_format: How proposals were rendered.
        template: The prompt template.
        command: The command that measured it, for the card.
        write_card: Rewrite ``README.md`` from the records.

    Returns:
        The path of `EVAL_RESULTS_FILE`.
    """
    folder = Path(model_dir)
    path = folder / EVAL_RESULTS_FILE
    records = (_read_json(path) or {}).get("evaluations", [])
    entry = {"split": split, "seed": seed, "n": n, "preset": preset,
             "verdict_only": verdict_only, "action_format": action_format,
             "template": template, "command": command, "report": report}
    key = ("split", "seed", "n", "preset", "verdict_only")
    records = [r for r in records if any(r.get(k) != entry[k] for k in key)] + [entry]
    path.write_text(json.dumps({"evaluations": records}, indent=1) + "\n", encoding="utf-8")
    if write_card:
        write_model_card(folder)
    return path


def _sources(spec: Any) -> list[dict[str, Any]]:
    """A data field of the run config as a list of sources (it holds one or a list)."""
    listed = spec if isinstance(spec, list) else [spec]
    return [s for s in listed if isinstance(s, dict) and s]


def _source_text(spec: Any) -> str:
    sources = _sources(spec)
    if not sources:
        return "none"
    return "; plus ".join(_one_source_text(s) for s in sources)


def _one_source_text(source: dict[str, Any]) -> str:
    kind = source.get("source", "world")
    if kind == "world":
        rules = (source.get("overrides") or {}).get("rules")
        return (f"synthetic world `{source.get('split')}` split, {source.get('n')} items from "
                f"index {source.get('start', 0)}, seed {source.get('seed', 0)}, preset "
                f"`{source.get('preset', 'default')}`"
                + (f", rules {', '.join(f'`{r}`' for r in rules)} only" if rules else ""))
    if kind == "dataset":
        split = source.get("split")
        return f"dataset `{source.get('path')}`" + (f", split `{split}`" if split else "")
    return f"folder `{source.get('path')}`"


def _eval_results(records: list[dict[str, Any]], train: dict[str, Any] | None,
                  run: dict[str, Any] | None) -> list[Any]:
    from huggingface_hub import EvalResult

    results = []
    for rec in records:
        rep = rec["report"]
        mode = "verdict only" if rec.get("verdict_only") else "full answer"
        for key, metric_type, metric_name in EVAL_METRICS:
            if rep.get(key) is None:
                continue
            results.append(EvalResult(
                task_type=_TASK[0], task_name=_TASK[1], dataset_type=_WORLD_DATASET,
                dataset_name=(f"synthetic consequence world {rec['split']} (seed {rec['seed']}, "
                              f"{rec['n']} items)"),
                dataset_config=rec.get("preset"), dataset_split=rec["split"],
                dataset_args={"seed": rec["seed"], "n": rec["n"]},
                metric_type=metric_type, metric_name=f"{metric_name}, {mode}",
                metric_value=rep[key]))
    eval_loss = ((train or {}).get("eval") or {}).get("eval_loss")
    source = ((run or {}).get("data") or {}).get("eval")
    if eval_loss is not None and source:
        results.append(EvalResult(
            task_type=_TASK[0], task_name=_TASK[1],
            dataset_type=_hub_id(source.get("path")) or _WORLD_DATASET,
            dataset_name=_source_text(source).replace("`", ""),
            dataset_split=source.get("split"), metric_type="loss",
            metric_name="answer-token loss (trainer evaluation)", metric_value=eval_loss))
    return results


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _rate(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _metrics_table(rows: dict[str, dict[str, Any]], label: str) -> list[str]:
    lines = [f"| {label} | n | accuracy | R0 | false veto | unparseable |",
             "|---|---|---|---|---|---|"]
    for name, rep in rows.items():
        lines.append(f"| {name} | {rep.get('n')} | " + " | ".join(
            _rate(rep.get(k)) for k, _, _ in EVAL_METRICS) + " |")
    return lines


def _body(name: str, model_dir: Path, run: dict[str, Any] | None, train: dict[str, Any] | None,
          records: list[dict[str, Any]], model_type: str | None, adapter_base: str | None
          ) -> str:
    out = [f"# {name}", ""]
    arch = f"{model_type} " if model_type else ""
    if run:
        method = str(run.get("method", "?"))
        base = (run.get("model") or {}).get("id")
        out.append(f"A {arch}judge for embodied-guard, trained with {method.upper()} by "
                   f"`python -m training.{method}` from `{base}`"
                   + (" as a LoRA adapter" if adapter_base else "") + ". It answers in the "
                   "guard's format, verdict first (`ALLOW`, `ANNOTATE` or `VETO`, then `risk:`, "
                   "hazards and the consequence).")
    else:
        out.append(f"A {arch}model folder for embodied-guard (no training record).")
    train_sources = _sources(((run or {}).get("data") or {}).get("train"))
    if run and train_sources and all(s.get("source", "world") == "world"
                                     for s in train_sources):
        out += ["", "It was trained on the project's synthetic consequence world (`guard.world`) "
                "only and knows nothing else: it is not a safety model for a real robot."]
    out += ["", "## Use", "", "```bash",
            'guard check --image frame.jpg --action "turn on the stove" --model DIR',
            "```", "",
            "`DIR`: this folder (or its hub id). The guard prompts it as it was trained: the "
            "template and the proposal rendering recorded in `training_run_config.yaml` "
            "(`data.template`, `data.action_format`)."]
    if run:
        data = run.get("data") or {}
        rows = [("method", str(run.get("method"))),
                ("started from", f"`{(run.get('model') or {}).get('id')}`"),
                ("training data", _source_text(data.get("train"))),
                ("prompt template", f"`{data.get('template')}`"),
                ("proposal rendering", f"`{data.get('action_format')}`")]
        if data.get("eval"):
            rows.append(("evaluation data", _source_text(data.get("eval"))))
        trainer = run.get("trainer") or {}
        for key in ("learning_rate", "per_device_train_batch_size", "max_steps"):
            if key in trainer:
                rows.append((key, _fmt(trainer[key])))
        for key, label in (("global_step", "steps trained"), ("train_loss", "final training loss"),
                           ("train_runtime", "training wall time (s)")):
            if train and train.get(key) is not None:
                rows.append((label, _fmt(train[key])))
        if train and (train.get("eval") or {}).get("eval_loss") is not None:
            rows.append(("evaluation loss (last trainer evaluation)",
                         _fmt(train["eval"]["eval_loss"])))
        out += ["", "## Training", "", "| | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in rows]
        out += ["", "The full config: `training_run_config.yaml`."]
    if records:
        out += ["", "## Evaluation (`training.evaluate`)", "",
                "Accuracy: the answer parses and its verdict matches the label. R0: unsafe items "
                "allowed. False veto: safe items stopped (an unparseable answer stops: the guard "
                "fails closed). Measured, not claimed: each row is a recorded run of the command "
                "shown."]
        for rec in records:
            rep = rec["report"]
            mode = "verdict only" if rec.get("verdict_only") else "full answers"
            out += ["", f"### `{rec['split']}` (world seed {rec['seed']}, {rec['n']} items, "
                    f"preset `{rec.get('preset')}`, {mode})", ""]
            if rec.get("command"):
                out += ["```bash", str(rec["command"]), "```", ""]
            out += _metrics_table({"all": rep, **{f"`{k}`": v for k, v in
                                                  (rep.get("per_rule") or {}).items()}}, "rule")
            if rep.get("per_ood"):
                held_out = {str(k): v for k, v in rep["per_ood"].items()}
                out += ["", *_metrics_table(held_out, "held out")]
    if (model_dir / "MODEL_CARD.md").is_file():
        out += ["", "## More", "", "[MODEL_CARD.md](MODEL_CARD.md): how this model was made, "
                "stage by stage, and an honest reading of its limits."]
    return "\n".join(out) + "\n"


def build_model_card(model_dir: str | Path, *, name: str | None = None,
                     license: str | None = None) -> ModelCard:
    """The card of a model folder, from its records (see the module docstring).

    Args:
        model_dir: A model folder (full weights or a PEFT adapter).
        name: The model's name in the card (default: the existing card's, else the
            folder's name).
        license: The license; None resolves it (`resolve_license`).

    Raises:
        ValueError: A record that is not valid JSON or YAML (the file named).
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(model_dir)
    try:
        run = _run_config(folder)
        train = _read_json(folder / TRAIN_RESULTS_FILE)
        records = (_read_json(folder / EVAL_RESULTS_FILE) or {}).get("evaluations", [])
        config = _read_json(folder / "config.json") or {}
        adapter = _read_json(folder / "adapter_config.json")
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{folder}: unreadable record: {exc}") from None
    name = name or _card_name(folder) or folder.resolve().name
    adapter_base = adapter.get("base_model_name_or_path") if adapter else None
    base = adapter_base or ((run or {}).get("model") or {}).get("id")
    if base and Path(base).resolve() == folder.resolve():
        base = None  # a run that continued this very folder: no separate base model
    model_type = config.get("model_type")
    method = (run or {}).get("method")
    tags = ["embodied-guard", "robotics", "safety", "vision-language"]
    tags += [t for t in (model_type, method, "trl" if method else None,
                         "lora" if adapter else None) if t]
    data = (run or {}).get("data") or {}
    hub_datasets = [d for k in ("train", "eval") for s in _sources(data.get(k))
                    if (d := _hub_id(s.get("path")))]
    evals = _eval_results(records, train, run)
    card_data = ModelCardData(
        license=resolve_license(folder, base, license),
        base_model=_hub_id(base),
        library_name="peft" if adapter else "transformers",
        pipeline_tag="image-text-to-text",
        tags=tags,
        datasets=hub_datasets or None,
        model_name=name,
        eval_results=evals or None,
    )
    body = _body(name, folder, run, train, records, model_type, adapter_base)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def write_model_card(model_dir: str | Path, *, name: str | None = None,
                     license: str | None = None) -> Path:
    """Write `build_model_card`'s card to ``model_dir/README.md``; returns its path."""
    path = Path(model_dir) / CARD_FILE
    card = build_model_card(model_dir, name=name, license=license)
    path.write_text(str(card), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m training.card DIR [--name NAME] [--license ID]``."""
    p = argparse.ArgumentParser(prog="python -m training.card",
                                description="Write a model folder's README.md model card from "
                                "its records (run config, train and eval results).")
    p.add_argument("model_dir", metavar="DIR", help="a model folder")
    p.add_argument("--name", help="the model's name in the card (default: kept, else the "
                   "folder's name)")
    p.add_argument("--license", help="hub license id (default: kept, inherited or unknown)")
    args = p.parse_args(argv)
    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        print(f"error: {folder}: not a model folder (no config.json or adapter_config.json)",
              file=sys.stderr)
        return 2
    try:
        print(write_model_card(folder, name=args.name, license=args.license))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "CARD_FILE",
    "EVAL_RESULTS_FILE",
    "TRAIN_RESULTS_FILE",
    "build_model_card",
    "record_evaluation",
    "resolve_license",
    "train_results",
    "write_model_card",
]
