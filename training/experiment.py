"""The synthetic-world experiment: one warm start, four methods at equal extra budget.

    python -m training.experiment --config configs/train/hazardworld_experiment.yaml --out DIR
    python -m training.experiment --config configs/train/hazardworld_experiment.yaml \\
        --out DIR --smoke          # minutes: tiny sizes, one seed, a few steps (a wiring check)
    python -m training.experiment --config configs/train/hazardworld_experiment.yaml \\
        --out DIR --resume         # a stopped run: keep the warm-start stages it finished

Per seed: build a tiny random Qwen-VL (`guard.tiny`), SFT it into the warm start (a share of
its prompts states the world's constitution, so the model learns to read rules given in its
context, which CASPO's teacher relies on), then continue from that warm start with each method
(SFT-continued, DPO, GRPO, CASPO) under the same step cap and wall-clock cap, with matched
learning rates for GRPO and CASPO. Every model, the warm start included, is evaluated on
``test_iid`` and ``test_ood`` (`training.evaluate`). Writes:

    DIR/results.json     per seed, method and split: accuracy, r0, false_veto_rate,
                         parse_fail_rate, per rule, per OOD kind, train and eval wall time;
                         plus mean and std over seeds
    DIR/results.md       the table of means +- std
    DIR/curves.png       training curves (loss; reward for the RL methods)
    DIR/seed<S>/...      every run's folder (run_config.yaml, log_history.json, model/)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from guard.errors import ConfigError, GuardError
from training.config import (
    check_world,
    load_run_config,
    load_yaml,
    parse_overrides,
    set_dotted,
)

SPLITS = ("test_iid", "test_ood")
METRICS = ("accuracy", "r0", "false_veto_rate", "parse_fail_rate")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelSpec(_Strict):
    """The random model every seed starts from (`guard.tiny.build_tiny_model` arguments)."""

    arch: Literal["qwen2_5_vl", "qwen3_vl"] = "qwen2_5_vl"
    sizes: dict[str, int] = Field(default_factory=dict)


class PhaseSpec(_Strict):
    """A training phase: its data size and trl trainer fields."""

    method: Literal["sft", "grpo", "dpo", "caspo"] = "sft"
    n: int = Field(default=2048, ge=1)
    start: int = Field(default=0, ge=0)
    constitution_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    projection_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """SFT only: share of rows in the projection-first answer mode (`training.config.DataSpec`),
    so that the model answers in both modes and CASPO's ``teacher_context: projection`` has a
    teacher."""
    answer_label_tokens: int | None = Field(default=None, ge=1)
    """SFT only: supervise each answer through this many tokens from its verdict
    (`training.config.DataSpec`); None, the whole answer."""
    house_rules: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of heating items with a house rule in their action text (`training.house_rules`:
    a warm-start stage that teaches the model to apply rules stated in its context)."""
    world: dict[str, Any] = Field(default_factory=dict)
    """WorldConfig overrides for this phase only, on top of the experiment's ``world`` (a
    curriculum stage can train a subset of the rules: ``{rules: [knife_child, stove_hot]}``)."""
    trainer: dict[str, Any] = Field(default_factory=dict)
    unlabeled: dict[str, Any] | None = None
    """CASPO only: world items added to its prompts without their labels
    (``{split: test_ood, n: 1024, seed: 3000}``; `training.config.DataSpec.unlabeled`). A
    test split is allowed only with a seed other than ``eval.seed``: the scenes' kind, never
    the evaluation items."""


class BudgetSpec(_Strict):
    """What every method gets on top of the warm start: the same caps."""

    max_steps: int = Field(default=100, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)


class EvalSpec(_Strict):
    test_iid: int = Field(default=500, ge=1)
    test_ood: int = Field(default=500, ge=1)
    seed: int = 1000
    batch_size: int = Field(default=64, ge=1)
    max_new_tokens: int = Field(default=112, ge=1)
    verdict_only: bool = False
    constitution_effect: bool = True
    """Also measure how much the constitution moves each model's verdict (the teacher signal
    CASPO depends on; `training.evaluate.constitution_effect`)."""
    projection_effect: bool = False
    """Also measure, on test_ood, each model's verdict after its own consequence projection
    against its verdict first (the signal of CASPO's projection teacher;
    `training.evaluate.projection_effect`)."""


class ExperimentConfig(_Strict):
    """The whole experiment (see the module doc)."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    num_threads: int | None = 2
    tiny_model: TinyModelSpec = Field(default_factory=TinyModelSpec)
    world: dict[str, Any] = Field(default_factory=dict)
    template: str = "consequence_compact"
    constitution: str = "hazardworld"
    warm_start: list[PhaseSpec] = Field(default_factory=list)
    """One SFT phase, or a curriculum: stages run in order, each from the previous model.
    Empty: ``warm_start_from`` is the warm start as it is (rerun the methods on a saved one)."""
    warm_start_from: str | None = None
    """Start the warm start's first stage from this model folder instead of a fresh random
    ``tiny_model`` (e.g. ``guard/models/hazardworld-small``, itself an SFT warm start of the
    same size: its recipe is in its MODEL_CARD.md). Paths are relative to the working folder."""
    shared_warm_start: bool = False
    """Train the warm start once (with the first seed) and start every seed's methods from
    it: the spread over seeds is then the methods' own, at a third of the warm-start cost."""
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    methods: dict[str, PhaseSpec]
    eval: EvalSpec = Field(default_factory=EvalSpec)
    smoke: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unlabeled_not_the_test_items(self) -> ExperimentConfig:
        phases: list[tuple[str, PhaseSpec]] = [
            (f"warm_start.{i}", p) for i, p in enumerate(self.warm_start)]
        for name, phase in [*phases, *self.methods.items()]:
            u = phase.unlabeled or {}
            for knob in ("projection_rate", "answer_label_tokens"):  # the SFT rows' own
                if getattr(phase, knob) and phase.method != "sft":
                    raise ValueError(f"{name}.{knob} is for sft (its answer rows); "
                                     f"not {phase.method}")
            if u and phase.method != "caspo":
                raise ValueError(f"{name}.unlabeled is for caspo (its teacher scores them); "
                                 f"{phase.method} has nothing to learn from them")
            if u and u.get("split", "train") != "train" and u.get("seed") in (
                    None, self.eval.seed):
                raise ValueError(
                    f"{name}.unlabeled draws {u.get('split')} items: give it a seed other than "
                    f"eval.seed ({self.eval.seed}), or they would be the evaluation's own")
        return self

    @model_validator(mode="after")
    def _worlds_valid(self) -> ExperimentConfig:
        """Each phase's world and the evaluation's, refused at load, not hours into a run."""
        check_world(self.world, where="world")
        phases = [(f"warm_start.{i}", p) for i, p in enumerate(self.warm_start)]
        for name, phase in [*phases, *((f"methods.{k}", p) for k, p in self.methods.items())]:
            if phase.world:
                check_world({**self.world, **phase.world}, where=f"{name}.world")
        return self

    @model_validator(mode="after")
    def _has_warm_start(self) -> ExperimentConfig:
        if not self.warm_start and self.warm_start_from is None:
            raise ValueError("warm_start is empty and warm_start_from is not set: "
                             "no model to start the methods from")
        return self


def load_experiment(path: str | Path, *, smoke: bool = False,
                    overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read the experiment config; with `smoke`, apply its ``smoke`` dotted overrides, then
    `overrides` (``{"budget.max_seconds": 60}``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = load_yaml(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    if smoke:
        for key, value in (data.get("smoke") or {}).items():
            set_dotted(data, key, value)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    if isinstance(data.get("warm_start"), dict):
        data["warm_start"] = [data["warm_start"]]
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: "
            f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise ConfigError(f"{p}: {problems}") from None


def _time_budget(seconds: float | None) -> Any:
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):  # type: ignore[misc]
        """Stops training once `seconds` of wall time have passed (equal compute)."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if seconds is not None and time.perf_counter() - self.t0 > seconds:
                control.should_training_stop = True

    return TimeBudget()


def _run_config(cfg: ExperimentConfig, phase: PhaseSpec, seed: int, model_id: Path,
                max_steps: int | None = None) -> Any:
    trainer = dict(phase.trainer)
    if max_steps is not None:
        trainer["max_steps"] = max_steps
    overrides = {**cfg.world, **phase.world}
    world = {"source": "world", "split": "train", "n": phase.n, "seed": seed,
             "start": phase.start, **({"overrides": overrides} if overrides else {}),
             "house_rules": phase.house_rules, "house_rule_seed": seed}
    data: dict[str, Any] = {"train": world, "template": cfg.template,
                            "constitution": cfg.constitution,
                            "constitution_rate": phase.constitution_rate,
                            "projection_rate": phase.projection_rate,
                            "answer_label_tokens": phase.answer_label_tokens}
    if phase.unlabeled:
        data["unlabeled"] = {"source": "world", "seed": seed,
                             **({"overrides": overrides} if overrides else {}),
                             **phase.unlabeled}
    return load_run_config({
        "method": phase.method, "seed": seed, "num_threads": cfg.num_threads,
        "model": {"id": str(model_id), "dtype": "float32"},
        "data": data,
        "trainer": trainer,
    })


def _evaluate(cfg: ExperimentConfig, model_dir: Path, items: dict[str, list[Any]],
              out: Path, *, record: bool = True) -> dict[str, Any]:
    from training.constitution import load_constitution
    from training.evaluate import constitution_effect, evaluate, load_for_eval, projection_effect

    model, processor = load_for_eval(model_dir)
    reports = {}
    for split, its in items.items():
        rep, results = evaluate(model, processor, its, template=cfg.template,
                                batch_size=cfg.eval.batch_size,
                                max_new_tokens=cfg.eval.max_new_tokens,
                                verdict_only=cfg.eval.verdict_only)
        if cfg.eval.constitution_effect:
            rep["constitution_effect"] = constitution_effect(
                model, processor, its, load_constitution(cfg.constitution),
                template=cfg.template, batch_size=cfg.eval.batch_size)
        if cfg.eval.projection_effect and split == "test_ood":  # where the student is unsure
            rep["projection_effect"] = projection_effect(
                model, processor, its, template=cfg.template, batch_size=cfg.eval.batch_size)
        reports[split] = rep
        with (out / f"eval_{split}.jsonl").open("w", encoding="utf-8") as fh:
            for r in results:
                fh.write(json.dumps({"id": r.id, "answer": r.answer, "correct": r.correct})
                         + "\n")
    # a model folder this experiment wrote carries what it measured in its card; a
    # warm_start_from folder is someone else's and stays untouched
    if record:
        from training.card import record_evaluation, write_model_card

        for split, rep in reports.items():
            record_evaluation(model_dir, rep, split=split, seed=cfg.eval.seed,
                              n=len(items[split]), preset="custom" if cfg.world else "default",
                              verdict_only=cfg.eval.verdict_only, template=cfg.template,
                              command="python -m training.experiment (its eval section)",
                              write_card=False)
        write_model_card(model_dir)
    return reports


def _mean_std(vals: list[float]) -> dict[str, float | None]:
    return {"mean": round(statistics.fmean(vals), 4) if vals else None,
            "std": round(statistics.pstdev(vals), 4) if len(vals) > 1 else 0.0}


def _aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every method/split metric (and per rule accuracy)."""
    methods = next(iter(per_seed.values())).keys()
    agg: dict[str, Any] = {}
    for method in methods:
        agg[method] = {}
        for split in SPLITS:
            reps = [per_seed[s][method]["eval"][split] for s in per_seed]
            row: dict[str, Any] = {}
            for m in METRICS:
                vals = [r[m] for r in reps if r.get(m) is not None]
                row[m] = {"mean": round(statistics.fmean(vals), 4) if vals else None,
                          "std": round(statistics.pstdev(vals), 4) if len(vals) > 1 else 0.0}
            for part in ("per_rule", "per_ood"):
                keys = sorted({k for r in reps for k in r.get(part) or {}})
                row[f"{part}_accuracy"] = {
                    k: _mean_std([r[part][k]["accuracy"] for r in reps
                                  if k in (r.get(part) or {})]) for k in keys}
            shifts = [r["constitution_effect"]["mean_abs_shift"] for r in reps
                      if "constitution_effect" in r]
            row["constitution_shift"] = _mean_std(shifts)
            effects = [r["projection_effect"] for r in reps if "projection_effect" in r]
            if effects:
                # per held-out kind: the verdict first (student) and after the projection
                kinds = sorted({k for e in effects for k in e["groups"] if "/" not in k})
                row["projection_accuracy"] = {
                    k: {side: _mean_std([e["groups"][k][f"{side}_accuracy"] for e in effects
                                         if e["groups"].get(k, {}).get(f"{side}_accuracy")
                                         is not None])
                        for side in ("student", "teacher")} for k in kinds}
            agg[method][split] = row
        agg[method]["train_s"] = round(statistics.fmean(
            [per_seed[s][method].get("train_s", 0.0) for s in per_seed]), 1)
    return agg


def markdown(agg: dict[str, Any], seeds: list[int]) -> str:
    """The results tables: mean +- std over seeds."""
    def cell(d: dict[str, Any] | None) -> str:
        return "-" if not d or d["mean"] is None else f"{d['mean']:.3f} ± {d['std']:.3f}"

    lines = [f"Seeds: {seeds}. Mean ± std over seeds.", "",
             "| method | split | accuracy | R0 | false veto | parse fail | train s |",
             "|---|---|---|---|---|---|---|"]
    for method, row in agg.items():
        for split in SPLITS:
            r = row[split]
            lines.append(f"| {method} | {split} | {cell(r['accuracy'])} | {cell(r['r0'])} | "
                         f"{cell(r['false_veto_rate'])} | {cell(r['parse_fail_rate'])} | "
                         f"{row['train_s']} |")
    rules = sorted({k for row in agg.values() for k in row["test_iid"].get(
        "per_rule_accuracy", {})})
    kinds = sorted({k for row in agg.values() for k in row["test_ood"].get(
        "per_ood_accuracy", {})})
    lines += ["", "Accuracy per rule (test_iid), per held-out kind (test_ood), and the mean "
              "|P(VETO | constitution) - P(VETO)| on test_ood (what CASPO's teacher adds):", "",
              "| method | " + " | ".join(rules) + " | " + " | ".join(f"ood {k}" for k in kinds)
              + " | constitution shift |",
              "|---|" + "---|" * (len(rules) + len(kinds) + 1)]
    for method, row in agg.items():
        iid, ood = row["test_iid"], row["test_ood"]
        lines.append(f"| {method} | "
                     + " | ".join(cell(iid.get("per_rule_accuracy", {}).get(k)) for k in rules)
                     + " | "
                     + " | ".join(cell(ood.get("per_ood_accuracy", {}).get(k)) for k in kinds)
                     + f" | {cell(ood.get('constitution_shift'))} |")
    kinds = sorted({k for row in agg.values() for k in row["test_ood"].get(
        "projection_accuracy", {})})
    if kinds:
        lines += ["", "Verdict accuracy on test_ood per held-out kind, verdict first (the "
                  "student) and after the model's own projection (CASPO's projection "
                  "teacher):", "",
                  "| method | " + " | ".join(f"{k} first | {k} projected" for k in kinds) + " |",
                  "|---|" + "---|" * (2 * len(kinds))]
        for method, row in agg.items():
            acc = row["test_ood"].get("projection_accuracy", {})
            lines.append(f"| {method} | " + " | ".join(
                f"{cell(acc.get(k, {}).get('student'))} | {cell(acc.get(k, {}).get('teacher'))}"
                for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, seeds: list[int], names: list[str]) -> Path | None:
    """Loss (and reward, for RL) per step of every run, one panel per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for seed in seeds:
            path = out / f"seed{seed}" / name / "log_history.json"
            if not path.is_file():
                continue
            rows = json.loads(path.read_text())
            key = "reward" if any("reward" in r for r in rows) else "loss"
            pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=f"seed {seed} {key}")
        ax.set_title(name)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _finished_stage(run_cfg: Any, run_dir: Path) -> dict[str, Any] | None:
    """The summary of a warm-start stage already trained in `run_dir` under exactly
    `run_cfg` (its recorded run config is the same text), else None."""
    from training.run import RUN_CONFIG_FILE

    summary, recorded = run_dir / "train_summary.json", run_dir / RUN_CONFIG_FILE
    if not (summary.is_file() and recorded.is_file()
            and (run_dir / "model" / "config.json").is_file()):
        return None
    if recorded.read_text(encoding="utf-8") != run_cfg.to_yaml():
        raise ConfigError(f"--resume: {run_dir} was trained under another run config than "
                          "this experiment's stage; give a new --out, or remove that folder")
    try:
        done = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # torn by the stop: the stage did not finish cleanly, train it again
    if not isinstance(done, dict):
        return None
    return {**done, "model_dir": str(run_dir / "model"), "resumed": True}


def _warm_start(cfg: ExperimentConfig, seed: int, sd: Path, build_tiny_model: Any,
                train: Any, resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Build the seed's random model (or take ``warm_start_from``) and run the stages in order;
    with `resume`, a stage already trained under --out under the same run config is kept."""
    if cfg.warm_start_from is not None:
        model = Path(cfg.warm_start_from)
        if not (model / "config.json").is_file():
            raise ConfigError(f"warm_start_from: {model} is not a model folder (no config.json)")
    else:
        model = build_tiny_model(cfg.tiny_model.arch, sd / "base", seed=seed,
                                 **cfg.tiny_model.sizes)
    if not cfg.warm_start:
        return Path(model), {"seed": seed, "train_s": 0.0, "model_dir": str(model)}
    stages: list[dict[str, Any]] = []
    for i, stage in enumerate(cfg.warm_start):
        run_dir = sd / "warm_start" if i == len(cfg.warm_start) - 1 else sd / f"warm_stage{i + 1}"
        run_cfg = _run_config(cfg, stage, seed, Path(model))
        done = _finished_stage(run_cfg, run_dir) if resume else None
        if done is None:
            done = train(run_cfg, run_dir)
            # the stages after a retrained one start from a new model, whatever their
            # folders hold (their recorded run config names the same folder)
            resume = False
        stages.append(done)
        model = run_dir / "model"
    summary = {**stages[-1], "seed": seed,
               "train_s": round(sum(s.get("train_s", 0.0) for s in stages), 1)}
    if len(stages) > 1:
        summary["stages"] = stages
    return Path(model), summary


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, resume: bool = False
                   ) -> dict[str, Any]:
    """Run every seed and method; write results.json, results.md and curves.png. With
    `resume`, warm-start stages a stopped run already finished under `out` are reused (the
    methods and evaluations always run again: their budgets are wall time)."""
    from guard.tiny import build_tiny_model
    from guard.world import WorldConfig
    from training.data import world_items
    from training.run import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    world = WorldConfig.preset("default", **cfg.world)
    eval_items = {split: world_items(split, getattr(cfg.eval, split), seed=cfg.eval.seed,
                                     config=world) for split in SPLITS}
    per_seed: dict[str, dict[str, Any]] = {}
    shared: tuple[Path, dict[str, Any]] | None = None
    for seed in cfg.seeds:
        sd = out / f"seed{seed}"
        sd.mkdir(parents=True, exist_ok=True)
        runs: dict[str, Any] = {}
        if shared is None:
            warm_dir, warm = _warm_start(cfg, seed, sd, build_tiny_model, train, resume)
            (sd / "warm_start").mkdir(parents=True, exist_ok=True)
            warm["eval"] = _evaluate(cfg, warm_dir, eval_items, sd / "warm_start",
                                     record=cfg.warm_start_from is None or bool(cfg.warm_start))
            if cfg.shared_warm_start:
                shared = (warm_dir, warm)
        else:
            warm_dir, warm = shared
        runs["warm_start"] = warm
        for name, phase in cfg.methods.items():
            summary = train(_run_config(cfg, phase, seed, warm_dir, cfg.budget.max_steps),
                            sd / name, callbacks=[_time_budget(cfg.budget.max_seconds)])
            runs[name] = {**summary, "eval": _evaluate(cfg, sd / name / "model", eval_items,
                                                       sd / name)}
        per_seed[str(seed)] = runs
        (sd / "results.json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    agg = _aggregate(per_seed)
    results = {"config": cfg.model_dump(mode="json"), "seeds": per_seed, "aggregate": agg,
               "wall_s": round(time.perf_counter() - t_start, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(agg, cfg.seeds), encoding="utf-8")
    plot_curves(out, cfg.seeds, ["warm_start", *cfg.methods])
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m training.experiment --config FILE --out DIR [--smoke]``."""
    p = argparse.ArgumentParser(prog="python -m training.experiment",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true",
                   help="apply the config's smoke overrides (a wiring check in minutes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. budget.max_seconds=60 or, to rerun the "
                   "methods on a saved warm start, warm_start=[] and warm_start_from=DIR "
                   "(repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the warm-start stages a stopped run of this config already "
                   "finished under --out (each only if trained under the same run config)")
    args = p.parse_args(argv)
    from training.run import quiet_known_noise

    quiet_known_noise()
    try:
        cfg = load_experiment(args.config, smoke=args.smoke,
                              overrides=parse_overrides(args.set))
        results = run_experiment(cfg, args.out, resume=args.resume)
    except GuardError as exc:
        print(f"error: {exc}")
        return 2
    print(markdown(results["aggregate"], cfg.seeds))
    print(f"wall time: {results['wall_s']} s; results in {args.out}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ExperimentConfig", "load_experiment", "markdown", "run_experiment"]
