"""training.config: recipes load, mistakes are named, overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.errors import ConfigError
from training.config import load_run_config, parse_overrides

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "configs" / "train").rglob("*.yaml")
                 if p.parent.name != "accelerate" and p.name != "hazardworld_experiment.yaml")


def _minimal(**trainer: object) -> dict[str, object]:
    return {"method": "caspo", "model": {"id": "m"},
            "data": {"train": {"source": "world", "n": 4}},
            "trainer": {"use_cpu": True, "bf16": False, **trainer}}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_loads(path: Path) -> None:
    method = path.stem.split("_")[0]
    cpu = path.parent.name == "tiny"
    # GPU recipes (bf16, flash attention) are checked field by field, not built, on CPU
    cfg = load_run_config(path, method=method, validate_trainer=cpu)
    assert cfg.method == method
    if cpu:
        args = cfg.trainer_args("out")
        assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing


def test_tiny_rl_recipes_match_except_for_caspo_knobs() -> None:
    grpo = load_run_config(ROOT / "configs/train/tiny/grpo.yaml", method="grpo")
    caspo = load_run_config(ROOT / "configs/train/tiny/caspo.yaml", method="caspo")
    own = {"caspo_lambda", "token_reward_clip", "token_reward_bonus", "teacher",
           "teacher_refresh_steps", "teacher_context"}
    assert {k: v for k, v in caspo.trainer.items() if k not in own} == grpo.trainer
    assert caspo.model == grpo.model and caspo.data.train == grpo.data.train


def test_caspo_knobs_reach_the_trainer_config() -> None:
    args = load_run_config(_minimal(caspo_lambda=0.3, teacher="snapshot",
                                    teacher_refresh_steps=5)).trainer_args("o")
    assert (args.caspo_lambda, args.teacher, args.teacher_refresh_steps) == (0.3, "snapshot", 5)
    assert args.constitution == "hazardworld" and args.token_reward_clip == [-3.0, 5.0]


@pytest.mark.parametrize(("trainer", "message"), [
    ({"caspo_lamda": 0.5}, "no field.*caspo_lamda"),
    ({"caspo_lambda": 2.0}, "caspo_lambda = 2.0"),
    ({"token_reward_clip": [5.0, -3.0]}, "token_reward_clip"),
    ({"teacher": "ema"}, "teacher = 'ema'"),
    ({"teacher_refresh_steps": 3}, "needs teacher = 'snapshot'"),
    ({"loss_type": "cispo"}, "loss_type"),
])
def test_bad_trainer_values_are_named(trainer: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(_minimal(**trainer))


def test_bad_sections_are_named(tmp_path: Path) -> None:
    bad = _minimal()
    bad["modle"] = {}
    with pytest.raises(ConfigError, match="modle"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="QLoRA"):
        load_run_config({**_minimal(), "model": {"id": "m", "quantization": "4bit"}})
    with pytest.raises(ConfigError, match="trains 'sft'"):
        load_run_config(_minimal(), method="sft")
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")


def test_dotted_overrides_and_yaml_round_trip(tmp_path: Path) -> None:
    over = parse_overrides(["trainer.max_steps=3", "model.id=/x/y", "data.train.n=7",
                            "model.lora.r=4"])
    assert over == {"trainer.max_steps": 3, "model.id": "/x/y", "data.train.n": 7,
                    "model.lora.r": 4}
    cfg = load_run_config(_minimal(), overrides=over)
    assert (cfg.trainer["max_steps"], cfg.model.id, cfg.data.train.n) == (3, "/x/y", 7)
    assert cfg.model.lora is not None and cfg.model.lora.r == 4
    path = tmp_path / "run_config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_run_config(path) == cfg
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["nokey"])


def test_set_dotted_indexes_lists_and_names_bad_keys() -> None:
    from training.config import set_dotted

    data = {"warm_start": [{"n": 1}, {"n": 2, "trainer": {}}]}
    set_dotted(data, "warm_start.1.trainer.max_steps", 5)
    set_dotted(data, "warm_start.0.n", 9)
    assert data == {"warm_start": [{"n": 9}, {"n": 2, "trainer": {"max_steps": 5}}]}
    with pytest.raises(ConfigError, match="'2' is not an index of a 2-item list"):
        set_dotted(data, "warm_start.2.n", 1)
    with pytest.raises(ConfigError, match="'n' is not a section"):
        set_dotted(data, "warm_start.0.n.x", 1)


def test_a_list_of_train_sources_concatenates_them_and_can_oversample_a_rule() -> None:
    from collections import Counter

    from training.run import load_items

    data = {"train": [{"source": "world", "n": 16, "start": 0},
                      {"source": "world", "n": 16, "start": 5000,
                       "overrides": {"rules": ["knife_child"]}}]}
    cfg = load_run_config({**_minimal(), "data": data})
    items = load_items(cfg.data.train)
    rules = Counter(it.meta["target_rule"] for it in items)
    assert len(items) == 32 and rules["knife_child"] >= 16
    assert isinstance(cfg.data.train, list)
    assert [it.id for it in items[16:]] == [it.id for it in load_items(cfg.data.train[1])]


def test_an_empty_list_of_train_sources_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        load_run_config({**_minimal(), "data": {"train": []}})


@pytest.mark.parametrize(("train", "path"), [
    ({"source": "world"}, "data.train.world.n"),
    ([{"source": "world", "n": 4}, {"source": "dataset"}], "data.train.1.dataset.path"),
])
def test_a_bad_source_is_named_by_its_path_alone(train: object, path: str) -> None:
    """One line for one mistake: not once per form `train` may take (a source, a list)."""
    with pytest.raises(ConfigError) as err:
        load_run_config({**_minimal(), "data": {"train": train}})
    bad = train[-1] if isinstance(train, list) else train
    assert str(err.value) == f"config: {path}: Field required (got {bad!r})"


@pytest.mark.parametrize(("overrides", "line"), [
    ({"contact_items": {"knife_child": ["book"]}},
     "overrides.contact_items: contact_items: 'knife_child' is not a contact rule"),
    ({"clutter": [3, 1]}, "overrides.clutter: expected (min, max) with 0 <= min <= max"),
    ({"colour": "red"}, "overrides.colour: Extra inputs are not permitted"),
])
def test_a_bad_world_override_is_refused_with_the_recipe(overrides: dict, line: str) -> None:
    """It was accepted here and raised a pydantic traceback once the model had loaded."""
    train = {"source": "world", "n": 4, "overrides": overrides}
    with pytest.raises(ConfigError) as err:
        load_run_config({**_minimal(), "data": {"train": train}})
    message = str(err.value)
    assert message.startswith(f"config: data.train.world: {line}")
    assert "\n" not in message and "Value error" not in message


def test_an_exponent_float_without_a_dot_is_a_float(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads ``3e-5`` as a string; a learning rate written so reached torch
    as one and failed inside the optimizer. Files and --set values read it as a float."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "configs/train/tiny/sft.yaml").read_text()
                      + "\n# the usual spelling\n", encoding="utf-8")
    cfg = load_run_config(recipe, overrides=parse_overrides(
        ["trainer.learning_rate=3e-5", "trainer.weight_decay=1E-2"]),
        validate_trainer=False)
    assert cfg.trainer["learning_rate"] == 3e-5
    assert cfg.trainer["weight_decay"] == 0.01
    assert parse_overrides(["a=2e-6", "b=-1.5e+3", "c=1_000", "d=0x10", "e=v1e5"]) == {
        "a": 2e-6, "b": -1500.0, "c": 1000, "d": 16, "e": "v1e5"}
    recipe.write_text("method: sft\nmodel: {id: m}\ndata: {train: {source: world, n: 4}}\n"
                      "trainer: {learning_rate: 2e-4, use_cpu: true, bf16: false}\n",
                      encoding="utf-8")
    args = load_run_config(recipe).trainer_args(tmp_path)
    assert args.learning_rate == 2e-4


def test_an_experiment_file_reads_exponent_floats_and_refuses_bad_yaml(tmp_path: Path) -> None:
    from training.experiment import load_experiment

    text = (ROOT / "configs/train/hazardworld_experiment.yaml").read_text(encoding="utf-8")
    p = tmp_path / "e.yaml"
    assert "learning_rate: 1.0e-3" in text
    p.write_text(text.replace("learning_rate: 1.0e-3", "learning_rate: 1e-3"), encoding="utf-8")
    assert load_experiment(p).warm_start[0].trainer["learning_rate"] == 1e-3
    p.write_text("seeds: [0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(p)


@pytest.mark.parametrize(("override", "line"), [
    ("world.clutter=[3, 1]", "world.clutter: expected (min, max)"),
    ("methods.caspo.world={contact_items: {knife_child: [book]}}",
     "methods.caspo.world.contact_items: contact_items: 'knife_child' is not a contact rule"),
])
def test_an_experiment_s_bad_world_is_refused_at_load(override: str, line: str) -> None:
    """It raised a pydantic traceback when the phase started: for a method, after the
    warm start had trained for half an hour."""
    from training.config import parse_overrides
    from training.experiment import load_experiment

    with pytest.raises(ConfigError) as err:
        load_experiment(ROOT / "configs/train/hazardworld_experiment.yaml",
                        overrides=parse_overrides([override]))
    assert line in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", [".nan", "[-3.0, .NaN]"])
def test_a_nan_trainer_value_is_refused_in_one_line(value: str) -> None:
    key = "learning_rate" if value == ".nan" else "token_reward_clip"
    with pytest.raises(ConfigError, match=rf"trainer\.{key} = .*: not a number \(NaN\)"):
        load_run_config(ROOT / "configs/train/tiny/caspo.yaml",
                        overrides=parse_overrides([f"trainer.{key}={value}"]),
                        validate_trainer=False)
