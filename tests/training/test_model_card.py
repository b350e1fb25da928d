"""Model folders are hub-ready: a trained folder loads with ``from_pretrained`` and its
``README.md`` card parses with ``huggingface_hub`` and carries the metrics the run measured (read
from its records, compared here with what training and evaluation returned)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("cv2")
datasets = pytest.importorskip("datasets")
from huggingface_hub import ModelCard  # noqa: E402

from training.card import (  # noqa: E402
    EVAL_RESULTS_FILE,
    TRAIN_RESULTS_FILE,
    build_model_card,
    record_evaluation,
    write_model_card,
)

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "guard" / "models" / "hazardworld-small"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _metrics(card: Any) -> dict[tuple[str | None, str], Any]:
    return {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}


@pytest.mark.slow
def test_a_trained_folder_loads_and_its_card_holds_the_measured_metrics(
        tiny_qwen2_5_vl: Path, tmp_path: Path) -> None:
    import transformers

    from guard.world import generate
    from training.config import load_run_config
    from training.data import dataset_items, load_hf_dataset
    from training.evaluate import evaluate, load_for_eval
    from training.run import train

    generate("train", 8, tmp_path / "train", seed=0)
    generate("test_iid", 4, tmp_path / "test_iid", seed=5)
    cfg = load_run_config({
        "method": "sft", "seed": 0, "num_threads": 2,
        "model": {"id": str(tiny_qwen2_5_vl), "dtype": "float32"},
        "data": {"train": {"source": "dataset", "path": str(tmp_path / "train")},
                 "eval": {"source": "dataset", "path": str(tmp_path / "test_iid")}},
        "trainer": {"use_cpu": True, "bf16": False, "gradient_checkpointing": False,
                    "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1,
                    "save_strategy": "no", "eval_strategy": "steps", "eval_steps": 2,
                    "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                    "disable_tqdm": True},
    })
    summary = train(cfg, tmp_path / "run")
    model_dir = tmp_path / "run" / "model"

    model, info = transformers.AutoModelForImageTextToText.from_pretrained(
        model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.model_type == "qwen2_5_vl"

    card = ModelCard.load(model_dir / "README.md")
    assert card.data.license == "apache-2.0"  # random weights built by guard tiny-model
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers"
    assert {"embodied-guard", "qwen2_5_vl", "sft"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder is no hub base model
    # the trainer's measured evaluation loss, as trl logged it
    log = json.loads((tmp_path / "run" / "log_history.json").read_text())
    eval_loss = [row["eval_loss"] for row in log if "eval_loss" in row][-1]
    recorded = json.loads((model_dir / TRAIN_RESULTS_FILE).read_text())
    assert recorded["global_step"] == summary["global_step"] == 2
    assert recorded["train_loss"] == summary["train_loss"]
    assert _metrics(card) == {(None, "loss"): eval_loss}
    assert f"| final training loss | {summary['train_loss']:.6g} |" in card.text

    # a recorded evaluation adds its metrics to the card
    items = dataset_items(load_hf_dataset(tmp_path / "test_iid"))
    judge, processor = load_for_eval(model_dir)
    rep, _ = evaluate(judge, processor, items, verdict_only=True, batch_size=4)
    for _ in range(2):  # the same setting recorded twice is one record
        record_evaluation(model_dir, rep, split="test_iid", seed=5, n=4, verdict_only=True,
                          command="python -m training.evaluate ...")
    assert len(json.loads((model_dir / EVAL_RESULTS_FILE).read_text())["evaluations"]) == 1
    card = ModelCard.load(model_dir / "README.md")
    got = _metrics(card)
    for key in ("accuracy", "r0", "false_veto_rate", "parse_fail_rate"):
        if rep[key] is not None:
            assert got[("test_iid", key)] == rep[key]
    assert card.data.model_name == "run"
    assert card.data.license == "apache-2.0"


def _run_folder(path: Path, run_config: str) -> Path:
    """A model folder holding only a config and the run config that trained it."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (path / "training_run_config.yaml").write_text(run_config)
    return path


def test_base_model_license_and_adapters(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "m", (
        "method: caspo\nmodel: {id: Qwen/Qwen2.5-VL-7B-Instruct}\n"
        "data: {train: {source: dataset, path: someone/guard-data, split: train}}\n"))
    card: Any = build_model_card(folder)
    assert card.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert card.data.datasets == ["someone/guard-data"]
    assert card.data.license == "unknown"  # not recorded anywhere: never guessed
    assert card.data.eval_results is None and "## Evaluation" not in card.text
    write_model_card(folder, license="other")
    assert ModelCard.load(folder / "README.md").data.license == "other"
    kept: Any = build_model_card(folder)
    assert kept.data.license == "other"  # a rewritten card keeps it
    # a LoRA adapter folder: peft, base from the adapter's config
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "Qwen/Qwen3-VL-4B-Instruct"}))
    card = build_model_card(adapter)
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert card.data.base_model == "Qwen/Qwen3-VL-4B-Instruct"


def test_a_run_trained_on_a_list_of_sources_names_each(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "m", (
        "method: sft\nmodel: {id: base}\ndata:\n  train:\n"
        "    - {source: world, split: train, n: 64}\n"
        "    - {source: world, split: train, n: 32, start: 900,"
        " overrides: {rules: [knife_child]}}\n"
        "    - {source: dataset, path: someone/guard-data}\n"))
    card: Any = build_model_card(folder)
    assert card.data.datasets == ["someone/guard-data"]
    assert "64 items from index 0" in card.text
    assert "32 items from index 900" in card.text and "`knife_child` only" in card.text
    assert "knows nothing else" not in card.text  # one source is not the synthetic world


def test_the_embedded_model_card_is_generated_from_its_records(tmp_path: Path) -> None:
    """The committed README.md is what `training.card` writes from the folder's records. If this
    fails after a new evaluation, rerun the commands in the card with ``--record`` (they rewrite
    it), or ``python -m training.card guard/models/hazardworld-small`` after a code change."""
    copy = tmp_path / "hazardworld-small"
    copy.mkdir()
    for name in ("README.md", "MODEL_CARD.md", "config.json", "training_run_config.yaml",
                 EVAL_RESULTS_FILE):
        shutil.copy(EMBEDDED / name, copy / name)
    write_model_card(copy)
    assert (copy / "README.md").read_text() == (EMBEDDED / "README.md").read_text()

    card = ModelCard.load(EMBEDDED / "README.md")
    assert card.data.license == "apache-2.0" and card.data.model_name == "hazardworld-small"
    records = json.loads((EMBEDDED / EVAL_RESULTS_FILE).read_text())["evaluations"]
    assert {r["split"] for r in records} == {"test_iid", "test_ood"}
    got = _metrics(card)
    for rec in records:
        assert rec["n"] == 512 and rec["verdict_only"]
        for key in ("accuracy", "r0", "false_veto_rate", "parse_fail_rate"):
            assert got[(rec["split"], key)] == rec["report"][key]


@pytest.mark.slow
def test_a_lora_run_cards_its_adapter_and_its_merged_model(
        tiny_qwen2_5_vl: Path, tmp_path: Path) -> None:
    from training.config import load_run_config
    from training.run import train

    cfg = load_run_config({
        "method": "sft", "seed": 0, "num_threads": 2,
        "model": {"id": str(tiny_qwen2_5_vl), "dtype": "float32", "lora": {"r": 4}},
        "data": {"train": {"source": "world", "n": 4, "preset": "easy"}},
        "trainer": {"use_cpu": True, "bf16": False, "gradient_checkpointing": False,
                    "max_steps": 1, "save_strategy": "no", "per_device_train_batch_size": 4,
                    "disable_tqdm": True},
    })
    summary = train(cfg, tmp_path / "lora", save_merged=True)
    adapter = ModelCard.load(tmp_path / "lora" / "model" / "README.md")
    merged = ModelCard.load(tmp_path / "lora" / "model_merged" / "README.md")
    assert adapter.data.library_name == "peft" and "lora" in adapter.data.tags
    assert merged.data.library_name == "transformers" and "lora" not in merged.data.tags
    assert adapter.data.license == merged.data.license == "apache-2.0"
    assert merged.data.model_name == "lora-merged"
    for card in (adapter, merged):
        assert f"| final training loss | {summary['train_loss']:.6g} |" in card.text
