"""training.data / constitution / processor / collators: the guard's prompts and answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guard.prompting import parse_answer
from training.constitution import load_constitution
from training.data import (
    GuardItem,
    action_text,
    folder_items,
    preference_rows,
    prompt_messages,
    prompt_rows,
    sft_rows,
    world_items,
)

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def items() -> list[GuardItem]:
    return world_items("train", 8, seed=0)


def test_world_items_carry_the_reference_answer_and_labels(items: list[GuardItem]) -> None:
    assert {it.label for it in items} == {"safe", "unsafe"}
    for it in items:
        parsed = parse_answer(it.reference_answer)
        assert (parsed.verdict.value == "veto") == (it.label == "unsafe")
        assert it.image.size == (112, 112)
        assert it.meta["target_rule"]


def test_rows_hold_the_guard_prompt_with_an_image_placeholder(items: list[GuardItem]) -> None:
    rows = sft_rows(items)
    prompt = rows[0]["prompt"]
    assert prompt == prompt_messages(action_text(items[0]))
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert prompt[1]["content"][0] == {"type": "image"}
    assert items[0].query in prompt[1]["content"][1]["text"]
    assert [r["completion"] for r in rows] == [it.reference_answer for it in items]
    prefs = preference_rows(items)
    for row, it in zip(prefs, items, strict=True):
        chosen, rejected = parse_answer(row["chosen"]), parse_answer(row["rejected"])
        assert chosen.verdict != rejected.verdict
        assert (rejected.verdict.value == "allow") == (it.label == "unsafe")
    rl = prompt_rows(items)
    assert [(r["label"], r["category"]) for r in rl] == [(it.label, it.category) for it in items]


def test_a_share_of_sft_prompts_can_state_the_constitution(items: list[GuardItem]) -> None:
    c = load_constitution("hazardworld")
    rows = sft_rows(items, constitution=c, constitution_rate=0.5, seed=1)
    flags = [r["with_constitution"] for r in rows]
    assert any(flags) and not all(flags)
    for r in rows:
        system = r["prompt"][0]["content"][0]["text"]
        assert ("Safety constitution" in system) == r["with_constitution"]


def test_folder_items_read_generated_world_and_minimal_records(tmp_path: Path) -> None:
    from guard.world import generate

    generate("test_ood", 4, tmp_path / "w", seed=0)
    got = folder_items(tmp_path / "w")
    want = world_items("test_ood", 4, seed=0)
    assert [(g.id, g.query, g.label, g.reference_answer) for g in got] == [
        (w.id, w.query, w.label, w.reference_answer) for w in want]
    assert got[0].meta["ood"] in ("composition", "layout")
    assert Path(got[0].image).is_file()

    minimal = tmp_path / "m"
    minimal.mkdir()
    (minimal / "items.json").write_text(json.dumps([
        {"id": "a", "image": "x.png", "query": "turn it on", "label": "unsafe",
         "category": "fire", "hazard": "A gas leak.", "consequence": "It explodes."},
        {"id": "b", "image": "y.png", "query": "open it"},
    ]))
    a, b = folder_items(minimal)
    assert parse_answer(a.reference_answer).hazards[0].category == "fire"
    assert b.label is None and parse_answer(b.reference_answer).verdict.value == "allow"
    (minimal / "items.json").write_text(json.dumps([{"id": "c", "query": "q"}]))
    with pytest.raises(ValueError, match="image"):
        folder_items(minimal)


def test_constitution_is_added_for_the_teacher_only() -> None:
    c = load_constitution("hazardworld")
    student = prompt_messages("turn on the stove")
    before = json.dumps(student)
    teacher = c.apply(student)
    assert json.dumps(student) == before  # the student's prompt is untouched
    sys_text = teacher[0]["content"][0]["text"]
    assert sys_text.startswith(student[0]["content"][0]["text"])
    assert "Heat ignites what burns" in sys_text and "Heat ignites" in c.text
    assert teacher[1] == student[1]  # same image placeholder, same action
    no_system = c.apply([student[1]])
    assert no_system[0]["role"] == "system" and "Safety constitution" in json.dumps(no_system)


def test_constitution_files_are_validated(tmp_path: Path) -> None:
    from guard.errors import ConfigError

    with pytest.raises(ConfigError, match="built-in"):
        load_constitution("nope")
    bad = tmp_path / "c.yaml"
    bad.write_text("system: no placeholder\n")
    with pytest.raises(ConfigError, match="placeholder"):
        load_constitution(bad)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_processor_and_collator_tokenize_as_the_guard_infers(
    arch: str, items: list[GuardItem], request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoConfig

    from guard.backends.qwen_inputs import IGNORE_INDEX
    from training.collators import GuardPreferenceCollator, GuardSFTCollator
    from training.data import to_dataset
    from training.processor import input_builder, load_processor

    folder = request.getfixturevalue(f"tiny_{arch}")
    processor = load_processor(folder)
    builder = input_builder(processor, AutoConfig.from_pretrained(folder))
    rows = list(to_dataset(sft_rows(items[:2])))  # through Arrow, as the trainers see them
    msgs = prompt_messages(action_text(items[0]))
    infer = builder.from_messages(msgs, [items[0].image])
    # trl's GRPO path: the processor's own chat template + image expansion
    for m in msgs:
        for p in m["content"]:
            if p["type"] == "image":
                p["image"] = items[0].image
    trl_ids = processor.apply_chat_template(
        [msgs], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0]
    assert list(trl_ids) == infer["input_ids"][0].tolist()

    batch = GuardSFTCollator(builder)(rows)
    n_prompt = infer["input_ids"].shape[1]
    assert batch["input_ids"][0, :n_prompt].tolist() == infer["input_ids"][0].tolist()
    assert bool((batch["labels"][0, :n_prompt] == IGNORE_INDEX).all())
    answer = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    text = processor.tokenizer.decode(answer, skip_special_tokens=True)
    assert text.strip() == items[0].reference_answer
    assert batch["image_grid_thw"].shape == (2, 3)
    assert int(batch["mm_token_type_ids"].sum()) == 2 * int(infer["mm_token_type_ids"].sum())

    pref = GuardPreferenceCollator(builder)(list(to_dataset(preference_rows(items[:2]))))
    assert pref["input_ids"].shape[0] == 4 and "labels" not in pref
    assert torch.equal(pref["input_ids"][0, :n_prompt], pref["input_ids"][2, :n_prompt])
    assert pref["image_grid_thw"].shape == (4, 3)
