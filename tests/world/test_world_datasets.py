"""A generated split loads with Hugging Face ``datasets``: images decode, labels match items.jsonl.

Offline (``HF_DATASETS_OFFLINE=1``) and with the cache in the test's own folder, as a user's
``load_dataset("imagefolder", data_dir=DIR)`` and ``load_dataset(DIR)`` (the dataset card) read
it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guard.world import generate, read_items, render_item, sample_item

pytest.importorskip("cv2")
datasets = pytest.importorskip("datasets")

#: Fields of items.jsonl that are labels or item facts, compared row by row.
LABEL_FIELDS = ("id", "query", "category", "hazard", "consequence", "label", "reference_answer",
                "split", "rule", "action", "tool", "target_rule", "ood")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _assert_rows_match(ds: Any, folder: Path, split: str, seed: int = 0) -> None:
    records = read_items(folder)
    assert len(ds) == len(records) > 0
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].dtype == "string" and ds.features["scene"].dtype == "string"
    for row, rec in zip(ds, records, strict=True):
        assert {f: row[f] for f in LABEL_FIELDS} == {f: rec[f] for f in LABEL_FIELDS}
        assert json.loads(row["scene"]) == rec["scene"]
        # the decoded frame is the item's own rendering, pixel for pixel
        item = sample_item(int(Path(rec["image"]).stem), split, seed)
        assert item.id == rec["id"]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), render_item(item))


@pytest.mark.parametrize("split", ["train", "test_ood"])
def test_imagefolder_gives_images_and_every_label(tmp_path: Path, split: str) -> None:
    # a folder named after the split: datasets must not read the name as a split of its own
    out = tmp_path / split
    generate(split, 12, out, seed=0)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    _assert_rows_match(ds, out, split)
    assert {r["label"] for r in ds} == {"safe", "unsafe"}


def test_the_dataset_card_names_the_split(tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    generate("test_iid", 6, tmp_path, seed=3, start=40)
    card = DatasetCard.load(tmp_path / "README.md")
    assert card.data.configs[0]["data_files"][0]["split"] == "test_iid"
    assert card.data.size_categories == ["n<1K"]
    dd = datasets.load_dataset(str(tmp_path))
    assert list(dd) == ["test_iid"]
    _assert_rows_match(dd["test_iid"], tmp_path, "test_iid", seed=3)


def test_metadata_holds_the_items_records(tmp_path: Path) -> None:
    generate("test_ood", 5, tmp_path, seed=1)
    meta = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    for row, rec in zip(meta, read_items(tmp_path), strict=True):
        assert next(iter(row)) == "file_name" and row["file_name"] == rec["image"]
        assert "image" not in row
        assert {**row, "scene": json.loads(row["scene"])} == {
            "file_name": rec["image"], **{k: v for k, v in rec.items() if k != "image"}}
