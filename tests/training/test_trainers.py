"""A few real steps of SFT, DPO, GRPO and CASPO on tiny models and a few world items.

Each run asserts that trainable weights moved; CASPO's also that its teacher read the
constitution, the student never did, and the teacher's forward ran without gradient.
The numbers (accuracy, R0) are the experiment's business, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("cv2")

from training.config import load_run_config  # noqa: E402
from training.rewards import completion_text  # noqa: E402
from training.run import build, save, train  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MARKER = "Safety constitution"  # a phrase of training/constitutions/hazardworld.yaml


def _config(method: str, model: Path, **trainer: Any) -> Any:
    rl = method in ("grpo", "caspo")
    base: dict[str, Any] = {
        "use_cpu": True, "bf16": False, "gradient_checkpointing": False, "max_steps": 2,
        "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no",
        "per_device_train_batch_size": 4, "disable_tqdm": True,
    }
    if rl:
        base.update(num_generations=4, max_completion_length=12)
    return load_run_config({
        "method": method, "seed": 0, "num_threads": 2,
        "model": {"id": str(model), "dtype": "float32"},
        "data": {"train": {"source": "world", "n": 8, "preset": "easy"}},
        "trainer": {**base, **trainer},
    })


def _length_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """A reward with spread on a random model (the outcome reward is 0 for all its babble)."""
    return [len(completion_text(c)) / 50.0 for c in completions]


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_supervised_methods_move_the_weights_and_save_a_loadable_model(
    method: str, tiny_qwen2_5_vl: Path, tmp_path: Path
) -> None:
    summary = train(_config(method, tiny_qwen2_5_vl), tmp_path)
    assert summary["global_step"] == 2
    assert summary["trainable_tensors_moved"] == summary["trainable_tensors"] > 0
    model_dir = tmp_path / "model"
    assert (model_dir / "run_config.yaml").is_file()
    assert load_run_config(model_dir / "run_config.yaml").method == method
    # and records, where the guard reads it, how it was prompted (template, action format)
    from guard.prompting import trained_action_format, trained_template

    assert trained_template(model_dir) == "consequence_compact"
    assert trained_action_format(model_dir) == "tool_call_v1"
    # the guard's own judge loads what training wrote, unchanged
    from PIL import Image

    from guard.backends.base import JudgeRequest
    from guard.backends.transformers_backend import TransformersBackend
    from guard.prompting import load_template

    backend = TransformersBackend(str(model_dir), max_new_tokens=4)
    out = backend.judge(JudgeRequest(prompt=load_template("consequence_compact").render(
        "turn on the stove", (Image.new("RGB", (112, 112)),)), max_new_tokens=4))
    assert out.n_tokens >= 1 and out.verdict_probs is not None
    log = json.loads((tmp_path / "log_history.json").read_text())
    assert any("loss" in row for row in log)


def test_grpo_moves_the_weights(tiny_qwen2_5_vl: Path, tmp_path: Path) -> None:
    summary = train(_config("grpo", tiny_qwen2_5_vl), tmp_path, reward_funcs=[_length_reward])
    assert summary["trainable_tensors_moved"] > 0


class _ForwardLog:
    """Records, for every forward of the model, its input ids and whether grad was on."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None:
            self.calls.append((ids.detach().cpu(), torch.is_grad_enabled()))


def test_caspo_teacher_reads_the_constitution_without_gradient(
    tiny_qwen2_5_vl: Path, tmp_path: Path
) -> None:
    # The outcome reward is the real one and is 0 for every babbling completion of a random
    # model: whatever moves the weights here is CASPO's token advantage.
    run = build(_config("caspo", tiny_qwen2_5_vl, caspo_lambda=0.5), tmp_path)
    trainer = run.trainer
    tok = run.processor.tokenizer
    log = _ForwardLog()
    hook = trainer.model.register_forward_pre_hook(log, with_kwargs=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    try:
        trainer.train()
    finally:
        hook.remove()
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved

    rows = [(tok.decode(r, skip_special_tokens=False), grad)
            for ids, grad in log.calls for r in ids]
    teacher_rows = [text for text, _ in rows if MARKER in text]
    assert teacher_rows, "no forward carried the constitution"
    assert all(not grad for text, grad in rows if MARKER in text), "teacher ran with grad"
    trained = [text for text, grad in rows if grad]
    assert trained and all(MARKER not in text for text in trained), "student saw it"
    # what the teacher scored is the student's prompt + completion with the constitution added
    last = trainer.last_teacher_input_ids
    assert last is not None and MARKER in tok.decode(last[0])
    metrics = [row for row in trainer.state.log_history if "caspo/logp_gap" in row]
    assert metrics and all(abs(m["caspo/logp_gap"]) > 0 for m in metrics)
    save(run)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_caspo_snapshot_teacher_is_a_refreshed_lora_adapter(
    tiny_qwen3_vl: Path, tmp_path: Path
) -> None:
    cfg = _config("caspo", tiny_qwen3_vl, teacher="snapshot", teacher_refresh_steps=1,
                  caspo_lambda=1.0)
    cfg = load_run_config({**cfg.model_dump(mode="json"),
                           "model": {"id": str(tiny_qwen3_vl), "dtype": "float32",
                                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}})
    run = build(cfg, tmp_path)
    policy = run.trainer.model
    assert "caspo_teacher" in policy.peft_config
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters()
                   if ".default." in n and "lora_B" in n}
    run.trainer.train()
    params = dict(policy.named_parameters())
    moved = [n for n, old in lora_before.items() if not torch.equal(params[n], old)]
    assert moved, "the student's LoRA did not move"
    for n in moved:  # refreshed after the last step: the snapshot equals the student
        teacher = params[n.replace(".default.", ".caspo_teacher.")]
        assert torch.equal(teacher, params[n]) and not teacher.requires_grad
    save(run)
    saved = json.loads((tmp_path / "model" / "adapter_config.json").read_text())
    assert saved["r"] == 4
    assert not (tmp_path / "model" / "caspo_teacher").exists()


def test_caspo_qlora_trains_an_adapter_on_a_4bit_base(
    tiny_qwen2_5_vl: Path, tmp_path: Path
) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    cfg = _config("caspo", tiny_qwen2_5_vl)
    cfg = load_run_config({**cfg.model_dump(mode="json"),
                           "model": {"id": str(tiny_qwen2_5_vl), "dtype": "float32",
                                     "quantization": "4bit", "lora": {"r": 4, "alpha": 8}}})
    run = build(cfg, tmp_path)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in run.trainer.model.modules())
    before = {n: p.detach().float().clone() for n, p in run.trainer.model.named_parameters()
              if p.requires_grad}
    assert before and all("lora_" in n for n in before)
    run.trainer.train()
    params = dict(run.trainer.model.named_parameters())
    assert any(not torch.equal(params[n].detach().float(), old) for n, old in before.items())


def test_entry_point_runs_a_recipe(tiny_qwen2_5_vl: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "training.sft", "--config", "configs/train/tiny/sft.yaml",
           "--out", str(tmp_path), "--set", f"model.id={tiny_qwen2_5_vl}",
           "--set", "data.train.n=4", "--set", "trainer.max_steps=1",
           "--set", "trainer.per_device_train_batch_size=2", "--set", "trainer.disable_tqdm=true"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "train_summary.json").read_text())["global_step"] == 1
    assert (tmp_path / "model" / "run_config.yaml").is_file()
    bad = subprocess.run([*cmd[:3], "--config", "configs/train/tiny/grpo.yaml", "--out",
                          str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "trains 'sft'" in bad.stderr


def test_caspo_joint_forward_scores_the_student_as_trl_does(
    tiny_qwen2_5_vl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Student rows share one forward with the longer teacher rows (extra left padding): their
    log-probs must equal trl's own scoring of the same completions."""
    from training.caspo_trainer import CASPOTrainer

    run = build(_config("caspo", tiny_qwen2_5_vl, max_steps=1), tmp_path)
    seen: dict[str, Any] = {}
    score, compute_loss = CASPOTrainer._score_with_teacher, CASPOTrainer._compute_loss

    def spy_score(self: Any, inputs: Any, output: Any) -> Any:
        teacher, student = score(self, inputs, output)
        seen.update(completions=output["completion_ids"], mask=output["completion_mask"],
                    student=student)
        return teacher, student

    def spy_loss(self: Any, model: Any, inputs: Any) -> Any:
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        with torch.no_grad():
            lp, _, _ = self._get_per_token_logps_and_entropies(
                model, ids, att, inputs["completion_ids"].size(1),
                pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                num_images=inputs["num_images"], mm_token_type_ids=inputs["mm_token_type_ids"])
        seen.setdefault("trl", []).append((inputs["completion_ids"], lp))
        return compute_loss(self, model, inputs)

    monkeypatch.setattr(CASPOTrainer, "_score_with_teacher", spy_score)
    monkeypatch.setattr(CASPOTrainer, "_compute_loss", spy_loss)
    run.trainer.train()
    checked = 0
    for cids, lp in seen["trl"]:  # trl shuffles rows before the loss: match by completion
        for i in range(cids.size(0)):
            j = next(k for k in range(seen["completions"].size(0))
                     if torch.equal(seen["completions"][k], cids[i]))
            m = seen["mask"][j].bool()
            assert torch.allclose(lp[i][m], seen["student"][j][m], atol=1e-4)
            checked += 1
    assert checked == seen["completions"].size(0)


def _label_length_reward(prompts: list[Any], completions: list[Any],
                         label: list[str | None], **_: Any) -> list[float | None]:
    """`_length_reward` where a label exists; None (no outcome) where it was dropped."""
    return [None if lab is None else len(completion_text(c)) / 50.0
            for c, lab in zip(completions, label, strict=True)]


@pytest.mark.parametrize(("lam", "labeled_lam"), [(0.0, None), (0.5, None), (1.0, 0.0)])
def test_caspo_unlabeled_prompts_learn_from_the_teacher_alone(
    lam: float, labeled_lam: float | None, tiny_qwen2_5_vl: Path, tmp_path: Path
) -> None:
    cfg = _config("caspo", tiny_qwen2_5_vl, caspo_lambda=lam, labeled_lambda=labeled_lam,
                  max_steps=2,
                  per_device_train_batch_size=16)  # 8 prompts, from both pools (seeded)
    data = {**cfg.data.model_dump(mode="json"),
            "unlabeled": {"source": "world", "split": "test_ood", "n": 8, "seed": 5}}
    cfg = load_run_config({**cfg.model_dump(mode="json"), "data": data})
    run = build(cfg, tmp_path, reward_funcs=[_label_length_reward])
    trainer = run.trainer
    labels = trainer.train_dataset["label"]
    assert labels.count(None) == 8 and len(labels) == 16
    seen: list[tuple[bool, torch.Tensor]] = []
    score = trainer._generate_and_score_completions

    def recording(inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = score(inputs)
        real = out["completion_mask"].bool()
        seen.extend((x["label"] is None, adv[m])
                    for x, adv, m in zip(inputs, out["advantages"], real, strict=True))
        return out

    trainer._generate_and_score_completions = recording
    trainer.train()
    unlabeled = [adv for none, adv in seen if none]
    labelled = [adv for none, adv in seen if not none]
    assert unlabeled and labelled
    assert any(a.abs().sum() > 0 for a in labelled)  # the outcome reward has spread there
    if lam == 0.0:  # GRPO's advantage alone: nothing to learn where no label is
        assert all(torch.count_nonzero(a) == 0 for a in unlabeled)
    else:  # the teacher's token reward trains on them
        assert any(a.abs().sum() > 0 for a in unlabeled)
    if lam == 0.0 or labeled_lam == 0.0:  # labelled: the outcome advantage, one per sequence
        assert all(torch.allclose(a, a[0].expand_as(a)) for a in labelled)
    else:  # token advantages vary along the sequence
        assert any(not torch.allclose(a, a[0].expand_as(a)) for a in labelled)


def test_unlabeled_prompts_are_for_caspo_only(tiny_qwen2_5_vl: Path) -> None:
    from guard.errors import ConfigError

    cfg = _config("grpo", tiny_qwen2_5_vl).model_dump(mode="json")
    cfg["data"]["unlabeled"] = {"source": "world", "n": 4}
    with pytest.raises(ConfigError, match=r"data\.unlabeled is for caspo"):
        load_run_config(cfg)


def test_caspo_verdict_kl_reads_the_teachers_answer_start(
    tiny_qwen2_5_vl: Path, tmp_path: Path
) -> None:
    run = build(_config("caspo", tiny_qwen2_5_vl, caspo_lambda=0.5, verdict_kl_coef=1.0),
                tmp_path)
    trainer = run.trainer
    hidden: list[torch.Tensor] = []
    checks: list[tuple[torch.Tensor, torch.Tensor]] = []
    answer_start, score = trainer._answer_start_logps, trainer._score_with_teacher

    def recording_start(model: Any, h: torch.Tensor) -> torch.Tensor:
        hidden.append(h.detach())
        return answer_start(model, h)

    def scoring(inputs: list[dict[str, Any]], output: dict[str, Any]) -> Any:
        hidden.clear()
        teacher_logps, student_logps = score(inputs, output)
        verdict = trainer.last_teacher_verdict_logps
        assert verdict is not None and verdict.shape == (teacher_logps.shape[0], 3)
        assert torch.allclose(verdict.exp().sum(-1), torch.ones(verdict.shape[0]))
        # The full distribution at the captured position, read at the sampled first token,
        # is the teacher's log-prob of that token: the position is the answer's start.
        head = trainer.model.get_output_embeddings()
        full = torch.log_softmax(head(hidden[-1]).float(), -1)
        checks.append((full.gather(1, output["completion_ids"][:, :1])[:, 0],
                       teacher_logps[:, 0]))
        return teacher_logps, student_logps

    trainer._answer_start_logps = recording_start
    trainer._score_with_teacher = scoring
    trainer.train()
    assert checks
    for dense_at_sample, sampled in checks:
        assert torch.allclose(dense_at_sample, sampled, atol=1e-4)
    kl = [row["caspo/verdict_kl"] for row in trainer.state.log_history
          if "caspo/verdict_kl" in row]
    assert kl and all(k > 0 for k in kl)


PROJECTION = "scene: a towel on the stove\neffect: the towel would catch fire\n"


@pytest.mark.parametrize("tiny", ["tiny_qwen2_5_vl", "tiny_qwen3_vl"])
def test_caspo_projection_teacher_scores_after_its_own_projection(
    tiny: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With ``teacher_context: projection`` the teacher is prompted projection first, writes
    its projection once per run of repeated prompts, and scores the student's completion as
    the answer after it; the student never sees either. A random model writes no projection,
    so its greedy answer is replaced here by one that opens with a projection (the real
    generate still runs, so the call and its inputs are the trainer's own)."""
    run = build(_config("caspo", request.getfixturevalue(tiny), caspo_lambda=0.5,
                        verdict_kl_coef=1.0, teacher_context="projection"), tmp_path)
    trainer = run.trainer
    tok = run.processor.tokenizer
    proj_ids = torch.tensor(tok.encode(PROJECTION + "VETO", add_special_tokens=False))
    real_generate = trainer.model.generate
    generated: list[int] = []

    def generate(**kwargs: Any) -> torch.Tensor:
        out = real_generate(**kwargs)
        if "Project first" not in tok.decode(kwargs["input_ids"][0]):
            return out  # trl sampling the student's completions
        generated.append(out.size(0))
        return torch.cat([kwargs["input_ids"], proj_ids.expand(out.size(0), -1)], 1)

    trainer.model.generate = generate
    log = _ForwardLog()
    hook = trainer.model.register_forward_pre_hook(log, with_kwargs=True)
    try:
        trainer.train()
    finally:
        hook.remove()
    # per_device_train_batch_size 4 = one prompt's group of 4: one projection per step
    assert generated == [1, 1]
    rows = [(tok.decode(r, skip_special_tokens=False), grad)
            for ids, grad in log.calls for r in ids]
    teacher_rows = [text for text, _ in rows if PROJECTION in text]
    assert teacher_rows and all(not grad for text, grad in rows if PROJECTION in text)
    assert all("Project first" in text for text in teacher_rows)
    trained = [text for text, grad in rows if grad]
    assert trained and all("Project first" not in t and PROJECTION not in t for t in trained)
    last = tok.decode(trainer.last_teacher_input_ids[0], skip_special_tokens=False)
    assert PROJECTION in last and not last.endswith(PROJECTION)  # the completion follows it
    projected = trainer.last_teacher_projected
    assert projected is not None and bool(projected.all())
    history = trainer.state.log_history
    assert [r["caspo/teacher_projected"] for r in history if "caspo/teacher_projected" in r] \
        == [1.0, 1.0]
    assert all(abs(r["caspo/logp_gap"]) > 0 for r in history if "caspo/logp_gap" in r)
    assert all(r["caspo/verdict_kl"] > 0 for r in history if "caspo/verdict_kl" in r)


def test_caspo_projection_with_a_control_token_counts_as_none(
    tiny_qwen2_5_vl: Path, tmp_path: Path
) -> None:
    """A projection that holds a special token (here the end of turn inside its scene line)
    would become that token again in the teacher's prompt: it counts as no projection."""
    run = build(_config("caspo", tiny_qwen2_5_vl, max_steps=1, caspo_lambda=0.5,
                        teacher_context="projection"), tmp_path)
    trainer = run.trainer
    tok = run.processor.tokenizer
    torn = "scene: a towel" + tok.eos_token + " on the stove\neffect: it would burn\nVETO"
    proj_ids = torch.tensor(tok.encode(torn, add_special_tokens=False))
    assert tok.eos_token_id in proj_ids.tolist()
    real_generate = trainer.model.generate

    def generate(**kwargs: Any) -> torch.Tensor:
        out = real_generate(**kwargs)
        if "Project first" not in tok.decode(kwargs["input_ids"][0]):
            return out
        return torch.cat([kwargs["input_ids"], proj_ids.expand(out.size(0), -1)], 1)

    trainer.model.generate = generate
    trainer.train()
    projected = trainer.last_teacher_projected
    assert projected is not None and not bool(projected.any())
    assert "a towel" not in tok.decode(trainer.last_teacher_input_ids[0])


def test_caspo_projection_teacher_without_a_projection_teaches_nothing(
    tiny_qwen2_5_vl: Path, tmp_path: Path
) -> None:
    """A random model's greedy answer opens with no projection: no row has a teacher, so the
    token reward and the dense term are 0 everywhere; with the outcome reward 0 on babble as
    well, nothing moves the weights (no teacher is never read as a teacher that agrees)."""
    run = build(_config("caspo", tiny_qwen2_5_vl, caspo_lambda=0.5, verdict_kl_coef=1.0,
                        teacher_context="projection"), tmp_path)
    trainer = run.trainer
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = trainer.state.log_history
    assert [r["caspo/teacher_projected"] for r in history if "caspo/teacher_projected" in r] \
        == [0.0, 0.0]
    assert all(r["caspo/logp_gap"] == 0 for r in history if "caspo/logp_gap" in r)
    assert all(r["caspo/verdict_kl"] == 0 for r in history if "caspo/verdict_kl" in r)
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize(("knobs", "problem"), [
    ({"teacher_context": "oracle"}, "teacher_context"),
    ({"teacher_context": "projection", "projection_template": "consequence_compact"},
     "not projection_first"),
    ({"teacher_context": "projection", "projection_template": "no_such_template"},
     "projection_template"),
    ({"projection_tokens": 0}, "projection_tokens"),
])
def test_caspo_projection_knobs_are_checked(knobs: dict[str, Any], problem: str,
                                            tiny_qwen2_5_vl: Path) -> None:
    from guard.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        _config("caspo", tiny_qwen2_5_vl, **knobs).trainer_args("unused")


def test_the_unlabeled_prompts_warning_is_dropped_as_trl_formats_it() -> None:
    """trl logs the warning with a "[RANK n] " prefix: the filter must still find it, and
    only for rows without a label."""
    import logging

    from training.caspo_trainer import _UnlabeledOnPurpose

    def record(label: str) -> logging.LogRecord:
        msg = ("[RANK 0] All reward functions returned None for the following kwargs:\n"
               f"{{'id': 'x', 'label': {label}}}\nPlease ensure ...")
        return logging.LogRecord("trl.trainer.grpo_trainer", logging.WARNING, "", 0, msg,
                                 None, None)

    assert not _UnlabeledOnPurpose().filter(record("None"))
    assert _UnlabeledOnPurpose().filter(record("'unsafe'"))
