"""Training reads a Hugging Face ``datasets`` Dataset: a folder ``guard world generate`` wrote,
loaded offline, gives the items `folder_items` gives from its items.jsonl, pixels included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guard.errors import ConfigError
from training.config import DatasetSource, load_run_config
from training.data import dataset_items, folder_items, load_hf_dataset, load_image, sft_rows

pytest.importorskip("cv2")
datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _fields(item: Any) -> tuple[Any, ...]:
    return (item.id, item.query, item.label, item.category, item.hazard, item.consequence,
            item.reference_answer, item.tool, item.arguments, item.meta)


def test_a_generated_split_read_through_datasets_is_the_folder_s_items(tmp_path: Path) -> None:
    from guard.world import generate

    generate("test_ood", 6, tmp_path / "w", seed=2)
    ds = load_hf_dataset(tmp_path / "w")  # the card names the one split
    got = dataset_items(ds)
    want = folder_items(tmp_path / "w")
    assert [_fields(g) for g in got] == [_fields(w) for w in want]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(np.asarray(load_image(g.image)), np.asarray(load_image(w.image)))
    # the rows the trainers read are the same too, prompt and target
    strip = [{k: v for k, v in r.items() if k != "image"} for r in sft_rows(got)]
    assert strip == [{k: v for k, v in r.items() if k != "image"} for r in sft_rows(want)]
    assert len(dataset_items(ds, limit=2)) == 2
    # the run config names such a folder
    source = DatasetSource(source="dataset", path=str(tmp_path / "w"), limit=3)
    from training.run import load_items

    assert [i.id for i in load_items(source)] == [w.id for w in want[:3]]
    with pytest.raises(ConfigError, match="Unknown split"):
        load_items(DatasetSource(source="dataset", path=str(tmp_path / "w"), split="train"))


def test_class_label_and_missing_columns(tmp_path: Path) -> None:
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["safe", "unsafe"])})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))],
         "query": ["open it", "turn on the stove"], "label": [0, 1]}, features=features)
    a, b = dataset_items(ds)
    assert (a.id, a.label, a.category) == ("0", "safe", "none")
    assert (b.label, b.category) == ("unsafe", "unknown")
    assert b.reference_answer.startswith("VETO")
    with pytest.raises(ValueError, match=r"no \['query'\] column"):
        dataset_items(ds.remove_columns("query"), where="mine")


def test_a_run_config_names_a_dataset_source(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    cfg = load_run_config({"method": "sft", "model": {"id": "m"},
                           "data": {"train": {"source": "dataset", "path": "d", "split": "x"}}},
                          validate_trainer=False)
    assert isinstance(cfg.data.train, DatasetSource) and cfg.data.train.split == "x"
    with pytest.raises(ConfigError, match=r"data\.train\.dataset\.path"):
        load_run_config({"method": "sft", "model": {"id": "m"},
                         "data": {"train": {"source": "dataset"}}}, validate_trainer=False)
    from training.run import load_items

    with pytest.raises(ConfigError, match=r"dataset '.*nowhere'"):
        load_items(DatasetSource(source="dataset", path=str(tmp_path / "nowhere")))
