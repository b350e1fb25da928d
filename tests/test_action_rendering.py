"""One rendering of a proposal into the judge's words (`guard.prompting.action`).

The same world item reaches the judge as the same prompt text whether it comes through the
core, a replayed episode (JSONL and MCAP), the demo's episode, the benchmark's item conversion,
the middleware or training's data builder; and the format a model folder records is the one
used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from guard.backends.scripted import ScriptedBackend
from guard.config import GuardConfig, ScriptedOptions, ScriptedStep
from guard.core import Guard
from guard.errors import ConfigError
from guard.prompting.action import (
    ACTION_FORMATS,
    DEFAULT_ACTION_FORMAT,
    render_action,
    resolve_action_format,
    trained_action_format,
)
from guard.types import ActionProposal, Frame

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "guard" / "models" / "hazardworld-small"
TEMPLATE = "consequence_compact"
STEPS = 6


def test_default_rendering_names_the_tool_and_the_arguments() -> None:
    p = ActionProposal(name="stove_on", description="turn on the stove",
                       arguments={"burner": 2, "at": "front"})
    assert DEFAULT_ACTION_FORMAT == "tool_call_v1"
    assert p.as_text() == ('turn on the stove (tool: stove_on) '
                           'arguments: {"at": "front", "burner": 2}')
    assert ActionProposal(name="move_forward").as_text() == "move_forward"
    assert ActionProposal(name="go", arguments={"m": 1}).as_text() == 'go arguments: {"m": 1}'
    assert p.as_text("phrase_v0") == "turn on the stove"
    assert p.as_text() == render_action(p.name, p.description, p.arguments)
    with pytest.raises(ConfigError, match=r"unknown.*tool_call_v1"):
        p.as_text("tool_call_v9")


def _folder(tmp_path: Path, text: str | None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (tmp_path / "training_run_config.yaml").write_text(text)
    return tmp_path


def test_the_model_folder_records_the_format(tmp_path: Path) -> None:
    bare = _folder(tmp_path / "none", None)
    assert trained_action_format(bare) is None
    assert resolve_action_format(None, bare) == DEFAULT_ACTION_FORMAT
    assert resolve_action_format(None, None) == DEFAULT_ACTION_FORMAT
    no_format = _folder(tmp_path / "old", "data:\n  template: consequence_compact\n")
    assert resolve_action_format(None, no_format) == DEFAULT_ACTION_FORMAT
    phrase = _folder(tmp_path / "phrase", "data:\n  action_format: phrase_v0\n")
    assert resolve_action_format(None, phrase) == "phrase_v0"
    assert resolve_action_format("tool_call_v1", phrase) == "tool_call_v1"  # configured wins
    odd = _folder(tmp_path / "odd", "data:\n  action_format: yaml_v7\n")
    with pytest.raises(ConfigError, match=r"training_run_config.yaml: data.action_format"):
        resolve_action_format(None, odd)


def test_the_embedded_model_records_a_known_format() -> None:
    if not (EMBEDDED / "config.json").is_file():
        pytest.skip("the embedded model is not in this install")
    assert trained_action_format(EMBEDDED) in ACTION_FORMATS


def test_training_rows_use_the_run_s_format() -> None:
    pytest.importorskip("cv2")
    from training.config import DataSpec
    from training.data import sft_rows, world_items

    items = world_items("test_iid", 2, seed=0)
    for fmt in ACTION_FORMATS:
        rows = sft_rows(items, TEMPLATE, action_format=fmt)
        texts = [r["prompt"][1]["content"][1]["text"] for r in rows]
        expected = [ActionProposal(name=it.tool, description=it.query).as_text(fmt)
                    for it in items]
        assert texts == [f"Action: {t}" for t in expected]
    assert texts != [r["prompt"][1]["content"][1]["text"] for r in sft_rows(items, TEMPLATE)]
    with pytest.raises(ValueError, match="unknown action format"):
        DataSpec.model_validate({"train": {"source": "world", "n": 1},
                                 "action_format": "free_text"})


# -- every front end, one text ----------------------------------------------------------------


class _Recording(ScriptedBackend):
    """The scripted judge; `requests` keeps what each front end sent."""

    def __init__(self) -> None:
        super().__init__(ScriptedOptions(responses=[ScriptedStep(text="ALLOW\nrisk: 0.0")]))


def _guard(tmp_path: Path, name: str) -> tuple[Guard, _Recording]:
    backend = _Recording()
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / f"{name}.jsonl"), "model.backend": "scripted",
        "policy.max_frame_age_ms": None, "prompt.template": TEMPLATE,
    })
    return Guard(config, backend=backend), backend


def _users(backend: ScriptedBackend) -> list[str]:
    return [r.prompt.user for r in backend.requests]


def _training_users(items: list) -> list[str]:
    from training.data import action_text, prompt_messages

    return [prompt_messages(action_text(it), TEMPLATE)[1]["content"][1]["text"] for it in items]


@pytest.fixture(scope="module")
def episode_items() -> list:
    """Training's items for the world episode's scenes (the same world items, in order)."""
    pytest.importorskip("cv2")
    from guard.world.dataset import EPISODE_START
    from training.data import world_items

    # `iter_episode` draws episode 0's step k as item EPISODE_START + k of its split
    return world_items("test_iid", STEPS, seed=0, start=EPISODE_START)


def test_replay_demo_core_and_middleware_prompt_as_training_does(
    tmp_path: Path, episode_items: list
) -> None:
    pytest.importorskip("rosbags")
    from guard.cli.demo import write_episode
    from guard.middleware import guarded
    from guard.replay.make_example import make_example
    from guard.replay.runner import replay

    expected = _training_users(episode_items)
    # world phrases with their tool names, nothing stripped or added by any front end
    assert all("(tool: " in t for t in expected)

    mcap, jsonl = make_example(tmp_path / "ex", steps=STEPS)
    demo = write_episode(tmp_path / "demo", STEPS, 0, "test_iid")
    for name, episode in (("mcap", mcap), ("jsonl", jsonl), ("demo", demo)):
        guard, backend = _guard(tmp_path, name)
        with guard:
            replay(episode, tmp_path / f"out-{name}", guard=guard, progress=False)
        assert _users(backend) == expected, name

    frame = Frame(image=np.zeros((112, 112, 3), np.uint8), stamp=None)
    guard, backend = _guard(tmp_path, "core")
    with guard:
        for it in episode_items:
            guard.check(frame, {"name": it.tool, "description": it.query})
    assert _users(backend) == expected

    guard, backend = _guard(tmp_path, "middleware")
    with guard:
        for it in episode_items:
            @guarded(guard, frames=lambda: frame, name=it.tool, describe=it.query,
                     on_veto="return")
            def tool() -> None:
                """A world action."""

            tool()
    assert _users(backend) == expected


def test_bench_items_prompt_as_training_does(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    from guard.bench.runner import run_bench
    from guard.bench.suites import load_suite
    from guard.world import generate
    from training.data import folder_items, world_items

    folder = generate("test_iid", STEPS, tmp_path / "world", seed=0).parent
    suite = load_suite("hazardworld", folder)
    guard, backend = _guard(tmp_path, "bench")
    with guard:
        run_bench(suite, guard, tmp_path / "bench", progress=False, plot=False, n_boot=10)
    expected = _training_users(world_items("test_iid", STEPS, seed=0))
    assert len(suite.items) == STEPS
    assert _users(backend) == expected  # one at a time, in file order
    # a folder of generated items trains on the text the benchmark judges
    assert _training_users(folder_items(folder)) == expected
    records = [json.loads(x) for x in (folder / "items.jsonl").read_text().splitlines()]
    assert all(r["tool"] == r["action"] for r in records)


def test_the_guard_renders_in_the_model_folder_s_format(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "model", "data:\n  action_format: phrase_v0\n")
    backend = _Recording()
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "a.jsonl"), "model.backend": "scripted",
        "model.id": str(folder), "policy.max_frame_age_ms": None,
        "prompt.template": TEMPLATE,
    })
    frame = Frame(image=np.zeros((8, 8, 3), np.uint8), stamp=None)
    with Guard(config, backend=backend) as guard:
        guard.check(frame, {"name": "stove_on", "description": "turn on the stove"})
    assert _users(backend) == ["Action: turn on the stove"]
    # a configured format wins over the folder's record
    backend = _Recording()
    config = config.with_overrides(**{"prompt.action_format": "tool_call_v1"})
    with Guard(config, backend=backend) as guard:
        guard.check(frame, {"name": "stove_on", "description": "turn on the stove"})
    assert _users(backend) == ["Action: turn on the stove (tool: stove_on)"]

