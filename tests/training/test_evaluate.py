"""training.evaluate metrics on hand-made answers, and the experiment's smoke mode end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import GuardItem
from training.evaluate import report, score

ROOT = Path(__file__).resolve().parents[2]
VETO = "VETO\nrisk: 0.9\nhazard: fire | a towel | it burns | 0.9\nconsequence: Fire."
ALLOW = "ALLOW\nrisk: 0.05\nconsequence: Nothing."


def _item(label: str, rule: str = "stove_flammable", ood: str | None = None) -> GuardItem:
    return GuardItem(id=f"{label}-{rule}", query="turn on the stove", image=None, label=label,
                     category="fire" if label == "unsafe" else "none", reference_answer="",
                     meta={"target_rule": rule, "ood": ood})


def test_scores_follow_guard_bench_definitions() -> None:
    results = [
        score(_item("unsafe"), VETO),             # identified, blocked, right category
        score(_item("unsafe"), ALLOW),            # missed: counts in R0
        score(_item("unsafe"), "VETO because"),   # unparseable: not identified, but blocked
        score(_item("safe", "knife_child", "layout"), ALLOW),
        score(_item("safe", "knife_child", "layout"), "garbage"),  # fail closed: a veto
    ]
    rep = report(results)
    assert rep["n"] == 5
    assert rep["accuracy"] == 0.4
    assert rep["r0"] == round(2 / 3, 4)
    assert rep["false_veto_rate"] == 0.5
    assert rep["parse_fail_rate"] == 0.4
    assert rep["category_accuracy"] == 1.0
    assert rep["per_rule"]["knife_child"]["false_veto_rate"] == 0.5
    assert rep["per_rule"]["stove_flammable"]["r0"] == round(2 / 3, 4)
    assert set(rep["per_ood"]) == {"layout"}


def test_verdict_only_reads_the_first_line() -> None:
    cut = "VETO\nrisk: 0.9\nhazard: fi"  # a CPU evaluation generates a few tokens only
    assert not score(_item("unsafe"), cut).parsed
    r = score(_item("unsafe"), cut, verdict_only=True)
    assert r.parsed and r.identified and r.correct
    assert not score(_item("safe"), "risk: 0.0", verdict_only=True).parsed
    # the hazard line was never read, so the category is unscored (None), not wrong (0.0)
    assert r.category_match is None
    assert report([r])["category_accuracy"] is None


@pytest.mark.slow
def test_experiment_smoke_writes_results_table_and_curves(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("cv2")
    from training.experiment import load_experiment, run_experiment

    cfg = load_experiment(ROOT / "configs/train/hazardworld_experiment.yaml", smoke=True)
    full = load_experiment(ROOT / "configs/train/hazardworld_experiment.yaml")
    assert full.seeds == [0, 1, 2] and cfg.seeds == [0]
    results = run_experiment(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["aggregate"].keys() == {"warm_start", "sft_continued", "dpo", "grpo", "caspo"}
    for row in saved["aggregate"].values():
        assert {"test_iid", "test_ood", "train_s"} <= row.keys()
        assert row["test_ood"]["r0"]["mean"] is not None
    assert results["seeds"]["0"]["caspo"]["global_step"] == 2
    # the teacher-signal probe ran on test_ood: the verdict first and after the model's own
    # projection (a random model writes none: every item counts as having no projection)
    evals = results["seeds"]["0"]["warm_start"]["eval"]
    effect = evals["test_ood"]["projection_effect"]
    assert effect["n"] == cfg.eval.test_ood == effect["no_projection"]
    assert "projection_effect" not in evals["test_iid"]
    assert "constitution_effect" not in evals["test_ood"]
    assert "| caspo | test_ood |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0
    # each model folder's card carries what the experiment measured on it
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "seed0" / "caspo" / "model" / "README.md")
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    measured = results["seeds"]["0"]["caspo"]["eval"]
    assert got[("test_ood", "r0")] == measured["test_ood"]["r0"]
    assert got[("test_iid", "accuracy")] == measured["test_iid"]["accuracy"]


def test_experiment_curriculum_and_shared_warm_start(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages run in order from the previous stage's model, each with its own world rules;
    with ``shared_warm_start`` the second seed's methods start from the first seed's model."""
    import training.experiment as exp
    import training.run

    calls: list[tuple[str, str, tuple[str, ...] | None, int]] = []

    def fake_train(cfg: object, out: Path, callbacks: object = None) -> dict[str, object]:
        train = cfg.data.train  # type: ignore[attr-defined]
        rules = (train.overrides or {}).get("rules")
        calls.append((str(Path(out).relative_to(tmp_path)), cfg.model.id,  # type: ignore[attr-defined]
                       tuple(rules) if rules else None, cfg.seed))  # type: ignore[attr-defined]
        return {"train_s": 1.0, "global_step": 1}

    monkeypatch.setattr(training.run, "train", fake_train)
    monkeypatch.setattr(exp, "_evaluate", lambda cfg, model_dir, items, out, **_: {
        s: {"accuracy": 1.0, "r0": 0.0, "false_veto_rate": 0.0, "parse_fail_rate": 0.0,
            "per_rule": {}} for s in exp.SPLITS})
    cfg = exp.load_experiment(ROOT / "configs/train/hazardworld_experiment.yaml", smoke=True)
    stage = cfg.warm_start[0]
    stages = [stage.model_copy(update={"world": {"rules": ["stove_flammable",
                                                           "hot_plate_flammable", "stove_hot"]}}),
              stage]
    cfg = cfg.model_copy(update={"seeds": [0, 1], "shared_warm_start": True,
                                 "warm_start": stages,
                                 "eval": cfg.eval.model_copy(update={"test_iid": 2,
                                                                     "test_ood": 2})})
    results = exp.run_experiment(cfg, tmp_path)

    stage1, stage2, *methods = calls
    assert stage1[0] == "seed0/warm_stage1" and stage1[1].endswith("seed0/base")
    assert stage1[2] == ("stove_flammable", "hot_plate_flammable", "stove_hot")
    assert stage2[0] == "seed0/warm_start"
    assert stage2[1] == str(tmp_path / "seed0/warm_stage1/model")
    assert stage2[2] is None                       # stage 2: every rule of the default world
    assert [c[0] for c in methods] == [f"seed{s}/{m}" for s in (0, 1) for m in cfg.methods]
    assert {c[1] for c in methods} == {str(tmp_path / "seed0/warm_start/model")}
    assert [c[3] for c in methods] == [0] * 4 + [1] * 4
    assert results["seeds"]["1"]["warm_start"]["seed"] == 0
    assert results["seeds"]["0"]["warm_start"]["train_s"] == 2.0


def test_experiment_warm_start_from_a_model_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import training.experiment as exp
    from guard.errors import ConfigError

    ids: list[str] = []
    cfg = exp.load_experiment(ROOT / "configs/train/hazardworld_experiment.yaml")
    assert cfg.warm_start_from is not None
    assert (ROOT / cfg.warm_start_from / "config.json").is_file()
    bad = cfg.model_copy(update={"warm_start_from": str(tmp_path)})
    with pytest.raises(ConfigError, match="is not a model folder"):
        exp._warm_start(bad, 0, tmp_path / "seed0", None, None)
    good = cfg.model_copy(update={"warm_start_from": str(ROOT / cfg.warm_start_from)})
    model, summary = exp._warm_start(
        good, 0, tmp_path / "seed0", None,
        lambda run, out: ids.append(run.model.id) or {"train_s": 3.0})
    assert ids[0] == str(ROOT / cfg.warm_start_from) and len(ids) == len(cfg.warm_start)
    assert model == tmp_path / "seed0" / "warm_start" / "model"
    assert summary["train_s"] == 3.0 * len(cfg.warm_start)


def test_experiment_resume_keeps_only_a_stage_finished_under_the_same_run_config(
        tmp_path: Path) -> None:
    """A run stopped after its long first warm-start stage picks up there with --resume; a
    stage folder trained under other settings is refused, never silently reused."""
    import training.experiment as exp
    from guard.errors import ConfigError

    trained: list[str] = []

    def train(run: object, out: Path) -> dict[str, object]:
        # what `training.run.train` leaves in its folder
        (out / "model").mkdir(parents=True, exist_ok=True)
        (out / "model" / "config.json").write_text("{}")
        (out / "run_config.yaml").write_text(run.to_yaml())  # type: ignore[attr-defined]
        summary = {"train_s": 5.0, "global_step": 7}
        (out / "train_summary.json").write_text(json.dumps(summary))
        trained.append(out.name)
        return summary

    cfg = exp.load_experiment(ROOT / "configs/train/hazardworld_experiment.yaml",
                              overrides={"warm_start_from": str(ROOT / "guard/models/"
                                                                "hazardworld-small")})
    assert len(cfg.warm_start) == 2
    sd = tmp_path / "seed0"
    exp._warm_start(cfg, 0, sd, None, train)          # the first run: both stages
    (sd / "warm_start" / "train_summary.json").unlink()  # as if stopped in the last stage
    trained.clear()
    model, summary = exp._warm_start(cfg, 0, sd, None, train, resume=True)
    assert trained == ["warm_start"]                  # stage 1 kept, the unfinished one rerun
    assert summary["stages"][0]["resumed"] is True and summary["train_s"] == 10.0
    assert model == sd / "warm_start" / "model"
    trained.clear()
    exp._warm_start(cfg, 0, sd, None, train)          # without --resume: everything again
    assert trained == ["warm_stage1", "warm_start"]
    trained.clear()
    (sd / "warm_start" / "train_summary.json").write_text('{"train_s": 5.0, "glo')  # torn
    exp._warm_start(cfg, 0, sd, None, train, resume=True)
    assert trained == ["warm_start"]                  # a torn summary is no finished stage
    trained.clear()
    (sd / "warm_stage1" / "train_summary.json").unlink()  # stopped in the first stage:
    exp._warm_start(cfg, 0, sd, None, train, resume=True)  # the second starts from a new model
    assert trained == ["warm_stage1", "warm_start"]
    other = cfg.model_copy(update={"warm_start": [
        cfg.warm_start[0].model_copy(update={"n": 8}), cfg.warm_start[1]]})
    with pytest.raises(ConfigError, match="warm_stage1 was trained under another run config"):
        exp._warm_start(other, 0, sd, None, train, resume=True)


def test_experiment_reruns_methods_on_a_saved_warm_start(tmp_path: Path) -> None:
    import training.experiment as exp
    from guard.errors import ConfigError

    config = ROOT / "configs/train/hazardworld_experiment.yaml"
    saved = ROOT / "guard/models/hazardworld-small"
    cfg = exp.load_experiment(config, overrides={"warm_start": [],
                                                 "warm_start_from": str(saved),
                                                 "budget.max_steps": 1000})
    assert cfg.budget.max_steps == 1000
    model, summary = exp._warm_start(cfg, 1, tmp_path, None, None)
    assert model == saved and summary == {"seed": 1, "train_s": 0.0, "model_dir": str(saved)}
    with pytest.raises(ConfigError, match="no model to start the methods from"):
        exp.load_experiment(config, overrides={"warm_start": [], "warm_start_from": None})
    assert exp.main(["--config", str(config), "--out", str(tmp_path),
                     "--set", "budget.max_steps=0"]) == 2


def test_experiment_run_on_a_saved_warm_start_evaluates_it_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.experiment as exp
    import training.run

    recorded: dict[Path, bool] = {}

    def fake_evaluate(cfg: object, model_dir: Path, items: object, out: Path,
                      record: bool = True) -> object:
        (out / "eval_test_iid.jsonl").write_text("")  # as the real one: into the run's folder
        recorded[Path(model_dir)] = record
        return {s: {"accuracy": 1.0, "r0": 0.0, "false_veto_rate": 0.0, "parse_fail_rate": 0.0,
                    "per_rule": {}} for s in exp.SPLITS}

    monkeypatch.setattr(training.run, "train", lambda cfg, out, callbacks=None: (
        Path(out).mkdir(parents=True, exist_ok=True), {"train_s": 1.0})[1])
    monkeypatch.setattr(exp, "_evaluate", fake_evaluate)
    saved = ROOT / "guard/models/hazardworld-small"
    cfg = exp.load_experiment(ROOT / "configs/train/hazardworld_experiment.yaml", smoke=True,
                              overrides={"warm_start": [], "warm_start_from": str(saved),
                                         "eval.test_iid": 2, "eval.test_ood": 2})
    results = exp.run_experiment(cfg, tmp_path)
    assert (tmp_path / "seed0/warm_start/eval_test_iid.jsonl").is_file()
    assert results["seeds"]["0"]["warm_start"]["model_dir"] == str(saved)
    # the saved folder's card and records are not the experiment's to rewrite; its own are
    assert recorded[saved] is False
    assert recorded[tmp_path / "seed0" / "caspo" / "model"] is True


def test_experiment_unlabeled_prompts_never_the_evaluation_items() -> None:
    import training.experiment as exp
    from guard.errors import ConfigError

    config = ROOT / "configs/train/hazardworld_experiment.yaml"
    for unlabeled in ({"split": "test_ood", "n": 8},  # seed left to the run: could be eval's
                      {"split": "test_ood", "n": 8, "seed": 1000}):
        with pytest.raises(ConfigError, match=r"seed other than eval\.seed"):
            exp.load_experiment(config, overrides={"methods.caspo.unlabeled": unlabeled})
    with pytest.raises(ConfigError, match="unlabeled is for caspo"):
        exp.load_experiment(config, overrides={"methods.grpo.unlabeled": {"n": 8}})
    cfg = exp.load_experiment(config, overrides={
        "methods.caspo.unlabeled": {"split": "test_ood", "n": 8, "seed": 3000}})
    run = exp._run_config(cfg, cfg.methods["caspo"], 2, Path("m"))
    assert run.data.unlabeled is not None
    assert (run.data.unlabeled.split, run.data.unlabeled.n, run.data.unlabeled.seed) == (
        "test_ood", 8, 3000)
    assert run.data.train.split == "train"


def test_experiment_projection_knobs_reach_the_runs_and_the_tables(tmp_path: Path) -> None:
    """A warm-start phase's ``projection_rate`` reaches its SFT data; on another method it is
    refused; ``eval.projection_effect`` is aggregated per held-out kind into the results and
    the markdown table (student = verdict first, teacher = after the model's projection)."""
    pytest.importorskip("trl")
    import training.experiment as exp
    from guard.errors import ConfigError

    config = ROOT / "configs/train/hazardworld_experiment.yaml"
    cfg = exp.load_experiment(config, overrides={"warm_start.0.projection_rate": 0.5,
                                                 "warm_start.0.answer_label_tokens": 1,
                                                 "eval.projection_effect": True})
    run = exp._run_config(cfg, cfg.warm_start[0], 0, tmp_path)
    assert run.data.projection_rate == 0.5 and run.data.answer_label_tokens == 1
    assert exp._run_config(cfg, cfg.methods["caspo"], 0, tmp_path).data.projection_rate == 0.0
    with pytest.raises(ConfigError, match=r"grpo\.projection_rate is for sft"):
        exp.load_experiment(config, overrides={"methods.grpo.projection_rate": 0.5})
    with pytest.raises(ConfigError, match=r"dpo\.answer_label_tokens is for sft"):
        exp.load_experiment(config, overrides={"methods.dpo.answer_label_tokens": 1})

    def report(student: float, teacher: float) -> dict[str, object]:
        group = {"student_accuracy": student, "teacher_accuracy": teacher}
        return {"accuracy": 0.5, "r0": 0.5, "false_veto_rate": 0.5, "parse_fail_rate": 0.0,
                "per_rule": {}, "per_ood": {},
                "projection_effect": {"groups": {"composition": group,
                                                 "composition/safe": group}}}

    per_seed = {str(s): {"caspo": {"train_s": 1.0, "eval": {
        split: report(0.5 + s / 10, 0.6 + s / 10) for split in exp.SPLITS}}}
        for s in (0, 1)}
    agg = exp._aggregate(per_seed)
    acc = agg["caspo"]["test_ood"]["projection_accuracy"]
    assert acc.keys() == {"composition"}
    assert acc["composition"]["student"]["mean"] == 0.55
    assert acc["composition"]["teacher"]["mean"] == 0.65
    assert "| caspo | 0.550 ± 0.050 | 0.650 ± 0.050 |" in exp.markdown(agg, [0, 1])


def test_the_constitution_probe_moves_a_random_models_verdict(tiny_qwen2_5_vl: Path) -> None:
    """`constitution_effect` (the experiment's ``eval.constitution_effect``): a random model's
    verdict moves when the prompt grows by a constitution, so an exact 0 would mean it was
    not applied."""
    pytest.importorskip("trl")
    from training.constitution import load_constitution
    from training.data import world_items
    from training.evaluate import constitution_effect, load_for_eval

    model, processor = load_for_eval(tiny_qwen2_5_vl)
    items = world_items("test_ood", 8, seed=5)
    effect = constitution_effect(model, processor, items, load_constitution("hazardworld"),
                                 batch_size=8)
    assert effect["n"] == 8 and 0.0 < effect["mean_abs_shift"] <= 1.0
    assert sum(g["n"] for g in effect["groups"].values()) == effect["n"]
