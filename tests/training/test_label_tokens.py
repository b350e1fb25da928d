"""data.answer_label_tokens: SFT supervises only the first answer tokens (the verdict), so its
gradient is not averaged away by the rest of the answer (docs/experiment, knife-near-child)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("cv2")

from training.config import load_run_config  # noqa: E402
from training.data import GuardItem, sft_rows, world_items  # noqa: E402


@pytest.fixture(scope="module")
def items() -> list[GuardItem]:
    return world_items("train", 4, seed=0)


def _run(method: str, model: Path | str, **data: Any) -> dict[str, Any]:
    return {"method": method, "seed": 0, "model": {"id": str(model), "dtype": "float32"},
            "data": {"train": {"source": "world", "n": 4}, **data},
            "trainer": {"use_cpu": True, "max_steps": 1, "per_device_train_batch_size": 2,
                        "save_strategy": "no", "disable_tqdm": True}}


def test_one_label_token_keeps_the_verdict_alone(tiny_qwen2_5_vl: Path,
                                                 items: list[GuardItem]) -> None:
    from transformers import AutoConfig

    from guard.backends.qwen_inputs import IGNORE_INDEX
    from training.collators import GuardSFTCollator
    from training.processor import input_builder, load_processor

    processor = load_processor(tiny_qwen2_5_vl)
    builder = input_builder(processor, AutoConfig.from_pretrained(tiny_qwen2_5_vl))
    rows = sft_rows(items)
    full = GuardSFTCollator(builder)(rows)
    cut = GuardSFTCollator(builder, label_tokens=1)(rows)
    for i, it in enumerate(items):
        labelled = (cut["labels"][i] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(labelled) == 1
        verdict = processor.tokenizer.decode(cut["labels"][i, labelled])
        assert verdict == it.reference_answer.split("\n")[0]  # VETO or ALLOW
        n = labelled[0] + 1  # the sequence ends at the verdict; the prompt is unchanged
        assert int(cut["attention_mask"][i].sum()) == n
        assert cut["input_ids"][i, :n].tolist() == full["input_ids"][i, :n].tolist()
    assert torch.equal(cut["pixel_values"], full["pixel_values"])


def test_a_projection_first_answer_keeps_its_projection_through_the_verdict(
        tiny_qwen2_5_vl: Path, items: list[GuardItem]) -> None:
    """In projection-first mode the verdict comes after the scene and effect lines: N tokens
    count from it, so the projection the teacher of CASPO reasons with is trained too."""
    from transformers import AutoConfig

    from guard.backends.qwen_inputs import IGNORE_INDEX
    from training.collators import GuardSFTCollator
    from training.processor import input_builder, load_processor

    processor = load_processor(tiny_qwen2_5_vl)
    builder = input_builder(processor, AutoConfig.from_pretrained(tiny_qwen2_5_vl))
    rows = sft_rows(items, projection_rate=1.0)
    assert {r["answer_mode"] for r in rows} == {"projection_first"}
    cut = GuardSFTCollator(builder, label_tokens=1)(rows)
    for i, row in enumerate(rows):
        labelled = (cut["labels"][i] != IGNORE_INDEX).nonzero().flatten().tolist()
        text = processor.tokenizer.decode(cut["labels"][i, labelled])
        scene, effect, verdict = row["completion"].split("\n")[:3]
        assert text == f"{scene}\n{effect}\n{verdict}"  # through the verdict, no further
        assert int(cut["attention_mask"][i].sum()) == labelled[-1] + 1


@pytest.mark.slow
def test_the_option_reaches_the_sft_collator_and_is_sft_only(tiny_qwen2_5_vl: Path,
                                                             tmp_path: Path) -> None:
    from guard.errors import ConfigError
    from training.run import build

    run = build(load_run_config(_run("sft", tiny_qwen2_5_vl, answer_label_tokens=1)), tmp_path)
    assert run.trainer.data_collator.label_tokens == 1
    assert load_run_config(_run("sft", tiny_qwen2_5_vl)).data.answer_label_tokens is None
    with pytest.raises(ConfigError, match=r"answer_label_tokens is for sft"):
        load_run_config(_run("dpo", tiny_qwen2_5_vl, answer_label_tokens=1))
