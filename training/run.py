"""Building and running one training run from a `RunConfig`; the entry points' shared main.

    python -m training.sft   --config configs/train/tiny/sft.yaml   --out runs/sft
    python -m training.caspo --config configs/train/tiny/caspo.yaml --out runs/caspo \\
        --set trainer.max_steps=20 --set model.id=runs/sft/model
    accelerate launch --config_file configs/train/accelerate/zero2_8gpu.yaml \\
        -m training.caspo --config configs/train/qwen2_5_vl_7b/caspo_lora.yaml --out runs/c7b

What a run writes under ``--out``:

    run_config.yaml        the resolved config (also inside every checkpoint and model/)
    trainer/               trl's output_dir: checkpoint-N/ (with run_config.yaml), logs
    model/                 the trained weights (or LoRA adapter), tokenizer, image processor,
                           train_results.json and a hub-ready README.md model card
                           (`training.card`)
    model_merged/          with ``save_merged: true`` and LoRA: base + adapter in one folder
    log_history.json       every logged step (loss, rewards, CASPO's token-reward stats)
    train_summary.json     method, steps, wall time, which trainable tensors moved
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import ConfigError, GuardError
from training.config import (
    DatasetSource,
    FolderSource,
    RunConfig,
    WorldSource,
    load_run_config,
    parse_overrides,
)

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run_config.yaml"


def load_items(source: WorldSource | FolderSource | DatasetSource
               | list[WorldSource | FolderSource | DatasetSource]) -> list[Any]:
    """The `GuardItem`s a data source names (a list of sources: their items, in order).

    Raises:
        ConfigError: A dataset source that ``datasets`` cannot load or that lacks the columns
            (the path named).
    """
    from training.data import folder_items, world_items

    if isinstance(source, list):
        return [item for one in source for item in load_items(one)]
    if isinstance(source, FolderSource):
        return folder_items(source.path, source.limit)
    if isinstance(source, DatasetSource):
        from training.data import dataset_items, load_hf_dataset

        try:
            return dataset_items(load_hf_dataset(source.path, source.split), source.limit,
                                 where=source.path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"dataset {source.path!r}: {exc}") from None
    from guard.world import WorldConfig

    world = WorldConfig.preset(source.preset, **source.overrides)
    return world_items(source.split, source.n, seed=source.seed, start=source.start,
                       config=world, house_rules=source.house_rules,
                       house_rule_seed=source.house_rule_seed,
                       bare_phrase_rate=source.bare_phrase_rate,
                       unnamed_tool_rate=source.unnamed_tool_rate)


def build_rows(cfg: RunConfig, items: list[Any]) -> list[dict[str, Any]]:
    """The rows the method's trainer reads."""
    from training.constitution import load_constitution
    from training.data import preference_rows, prompt_rows, sft_rows

    fmt = cfg.data.action_format
    if cfg.method == "sft":
        constitution = (load_constitution(cfg.data.constitution)
                        if cfg.data.constitution_rate else None)
        return sft_rows(items, cfg.data.template, constitution=constitution,
                        constitution_rate=cfg.data.constitution_rate, seed=cfg.seed,
                        action_format=fmt, projection_rate=cfg.data.projection_rate,
                        projection_template=cfg.data.projection_template)
    if cfg.method == "dpo":
        return preference_rows(items, cfg.data.template, action_format=fmt)
    return prompt_rows(items, cfg.data.template, action_format=fmt)


@dataclass
class Run:
    """A built run: the trainer and what it was built from."""

    config: RunConfig
    out: Path
    trainer: Any
    processor: Any


def _save_run_config_callback(text: str) -> Any:
    """A callback writing the run config into every checkpoint folder trl saves (built on
    first use: transformers is imported only once training starts)."""
    from transformers import TrainerCallback

    class SaveRunConfig(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir() and state.is_world_process_zero:
                (ckpt / RUN_CONFIG_FILE).write_text(text, encoding="utf-8")

    return SaveRunConfig()


def build(cfg: RunConfig, out: str | Path, *, reward_funcs: list[Any] | None = None,
          callbacks: list[Any] | None = None) -> Run:
    """Load model, processor and data, and build the method's trainer.

    Args:
        cfg: The run config.
        out: Output folder.
        reward_funcs: GRPO/CASPO only: replaces the outcome rewards (tests, experiments).
        callbacks: Extra ``TrainerCallback``s.

    Raises:
        ConfigError: An inconsistent config (caught before the model loads where possible).
    """
    import torch

    from training.models import load_model
    from training.processor import input_builder, load_processor
    from training.rewards import outcome_reward_funcs

    out = Path(out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    args = cfg.trainer_args(out / "trainer")
    if (cfg.method in ("grpo", "caspo") and getattr(args, "beta", 0.0) != 0.0
            and cfg.model.adapter and cfg.model.lora is None):
        raise ConfigError(
            "trainer.beta > 0 with model.adapter and full fine-tuning: trl would load the KL "
            "reference from the base model without the adapter; merge it into a folder first "
            "(a run with save_merged: true) and point model.id at that folder"
        )
    processor = load_processor(cfg.model.id, use_processor=cfg.model.use_processor)
    model, lora = load_model(cfg.model)
    from training.data import to_dataset, unlabeled_rows

    train_rows = build_rows(cfg, load_items(cfg.data.train))
    if cfg.data.unlabeled is not None:
        train_rows += unlabeled_rows(load_items(cfg.data.unlabeled), cfg.data.template,
                                     action_format=cfg.data.action_format)
    train_ds = to_dataset(train_rows)
    eval_ds = (to_dataset(build_rows(cfg, load_items(cfg.data.eval)))
               if cfg.data.eval is not None else None)
    cbs = [_save_run_config_callback(cfg.to_yaml()), *(callbacks or [])]
    common: dict[str, Any] = {
        "args": args, "train_dataset": train_ds, "eval_dataset": eval_ds,
        "processing_class": processor, "peft_config": lora, "callbacks": cbs,
    }
    if cfg.method == "sft":
        from training.collators import GuardSFTCollator
        from training.sft import verdict_weighted_trainer_class

        collator = GuardSFTCollator(input_builder(processor, model.config), args.max_length,
                                    cfg.data.answer_label_tokens, cfg.data.verdict_loss_weight)
        trainer = verdict_weighted_trainer_class()(model=model, data_collator=collator, **common)
    elif cfg.method == "dpo":
        from trl import DPOTrainer

        from training.collators import GuardPreferenceCollator

        collator = GuardPreferenceCollator(input_builder(processor, model.config),
                                           args.max_length)
        trainer = DPOTrainer(model=model, data_collator=collator, **common)
    else:
        funcs = reward_funcs
        if funcs is None:
            funcs, weights = outcome_reward_funcs()
            if args.reward_weights is None:
                args.reward_weights = weights
        if cfg.method == "grpo":
            from trl import GRPOTrainer

            trainer = GRPOTrainer(model=model, reward_funcs=funcs, **common)
        else:
            from training.caspo_trainer import CASPOTrainer

            trainer = CASPOTrainer(model=model, reward_funcs=funcs, **common)
    return Run(config=cfg, out=out, trainer=trainer, processor=processor)


def _write_run_config(model_dir: Path, text: str) -> None:
    """The run config beside a saved model, also under the name the guard reads its template
    and action format from (`guard.prompting.action.TRAINING_RUN_CONFIG`): a model folder is
    prompted as it was trained."""
    from guard.prompting.action import TRAINING_RUN_CONFIG

    for name in (RUN_CONFIG_FILE, TRAINING_RUN_CONFIG):
        (model_dir / name).write_text(text, encoding="utf-8")


def _write_card(model_dir: Path, trainer: Any, name: str) -> None:
    """What the run measured (`training.card.TRAIN_RESULTS_FILE`, from trl's log history) and
    the hub-ready ``README.md`` model card built from it and the run config."""
    from training.card import TRAIN_RESULTS_FILE, train_results, write_model_card

    results = train_results(trainer.state.log_history, trainer.state.global_step)
    (model_dir / TRAIN_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n",
                                                encoding="utf-8")
    write_model_card(model_dir, name=name)


def save(run: Run, *, merged: bool = False) -> Path:
    """Write the final model, processor files, run config, training results and model card
    (``README.md``, `training.card`) to ``OUT/model``."""
    trainer, out = run.trainer, run.out
    if hasattr(trainer, "drop_teacher"):
        trainer.drop_teacher()
    model_dir = out / "model"
    trainer.save_model(str(model_dir))
    if trainer.accelerator.is_main_process:
        run.processor.save_pretrained(str(model_dir))
        _write_run_config(model_dir, run.config.to_yaml())
        _write_card(model_dir, trainer, out.resolve().name)
        spec = run.config.model
        if merged and spec.lora is not None and spec.quantization == "none":
            merged_dir = out / "model_merged"
            policy = trainer.accelerator.unwrap_model(trainer.model)
            policy.merge_and_unload().save_pretrained(str(merged_dir))
            run.processor.save_pretrained(str(merged_dir))
            _write_run_config(merged_dir, run.config.to_yaml())
            _write_card(merged_dir, trainer, f"{out.resolve().name}-merged")
    return model_dir


def train(cfg: RunConfig, out: str | Path, *, reward_funcs: list[Any] | None = None,
          callbacks: list[Any] | None = None, resume: bool = False,
          save_merged: bool = False) -> dict[str, Any]:
    """Build, train and save one run; returns the summary written to train_summary.json."""
    from training.models import changed_parameters, trainable_parameters

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
    t0 = time.perf_counter()
    run = build(cfg, out, reward_funcs=reward_funcs, callbacks=callbacks)
    t_built = time.perf_counter()
    before = trainable_parameters(run.trainer.model)
    resume_from = resume and any((out / "trainer").glob("checkpoint-*"))
    result = run.trainer.train(resume_from_checkpoint=True if resume_from else None)
    t_trained = time.perf_counter()
    moved = changed_parameters(run.trainer.model, before)
    save(run, merged=save_merged)
    summary = {
        "method": cfg.method,
        "global_step": run.trainer.state.global_step,
        "train_loss": getattr(result, "training_loss", None),
        "build_s": round(t_built - t0, 2),
        "train_s": round(t_trained - t_built, 2),
        "trainable_tensors": len(before),
        "trainable_tensors_moved": len(moved),
        "model_dir": str(out / "model"),
    }
    if run.trainer.accelerator.is_main_process:
        (out / "log_history.json").write_text(
            json.dumps(run.trainer.state.log_history, indent=1) + "\n", encoding="utf-8")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n",
                                                encoding="utf-8")
    return summary


class _DropPrefixes(logging.Filter):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Silence messages that say nothing actionable on every run.

    bitsandbytes' CPU backend logs at import that the optional hub ``kernels`` package is
    missing (it would fetch code from a hub; the built-in kernels work), and transformers 5
    renames ``gradient_checkpointing`` while trl 1.16 still sets the old name.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        _DropPrefixes("Failed to load CPU gemm_4bit_forward"))
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated",
                            category=FutureWarning)


def main(method: str, argv: list[str] | None = None) -> int:
    """``python -m training.<method> --config FILE --out DIR [--set KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m training.{method}",
        description=f"Train the guard model with {method.upper()} (see training/README.md).",
    )
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. trainer.max_steps=10 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the last checkpoint in OUT/trainer")
    parser.add_argument("--save-merged", action="store_true",
                        help="with LoRA, also write base + adapter merged to OUT/model_merged")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_known_noise()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = load_run_config(args.config, method=method, overrides=parse_overrides(args.set))
        summary = train(cfg, args.out, resume=args.resume, save_merged=args.save_merged)
    except GuardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


__all__ = ["RUN_CONFIG_FILE", "Run", "build", "build_rows", "load_items", "main", "save", "train"]
