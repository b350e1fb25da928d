"""data.verdict_loss_weight: SFT's loss on the whole answer as a weighted mean, the verdict
token weighing more (docs/experiment, knife-near-child: the verdict is the knife answer's one
picture-dependent token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("cv2")

from guard.backends.qwen_inputs import IGNORE_INDEX  # noqa: E402
from training.collators import LABEL_WEIGHTS, verdict_offset  # noqa: E402
from training.config import load_run_config  # noqa: E402
from training.losses import token_weight_scale  # noqa: E402


def _cfg(model: Path, **data: Any) -> dict[str, Any]:
    return {"method": "sft", "seed": 0, "model": {"id": str(model), "dtype": "float32"},
            "data": {"train": {"source": "world", "n": 6}, **data},
            "trainer": {"use_cpu": True, "max_steps": 1, "per_device_train_batch_size": 6,
                        "save_strategy": "no", "disable_tqdm": True}}


def _hand_loss(model: Any, batch: dict[str, Any], weights: Any) -> Any:
    """sum(w * CE) / sum(w) over the answer tokens, from the full logits."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", LABEL_WEIGHTS)}
    logits = model(**inputs).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0),
                                           reduction="none")
    w = weights[:, 1:] * (labels != IGNORE_INDEX)
    return (w * ce).sum() / w.sum()


@pytest.fixture(scope="module")
def built(tiny_qwen2_5_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from training.run import build, build_rows, load_items

    out: dict[str, Any] = {}
    for w in (1.0, 30.0):
        cfg = load_run_config(_cfg(tiny_qwen2_5_vl, verdict_loss_weight=w, projection_rate=0.5))
        run = build(cfg, tmp_path_factory.mktemp(f"w{w}"))
        run.trainer.model.eval()
        out[str(w)] = (run, build_rows(cfg, load_items(cfg.data.train)))
    return out


@pytest.mark.parametrize("w", [30.0, 1.0])
def test_the_loss_is_the_weighted_mean(built: dict[str, Any], w: float) -> None:
    run, rows = built[str(w)]
    assert {r["answer_mode"] for r in rows} == {"projection_first", "verdict_first"}
    batch = run.trainer.data_collator(rows)
    if w == 1.0:  # unchanged: no weights in the batch, trl's own token mean
        assert LABEL_WEIGHTS not in batch
        weights = torch.ones_like(batch["labels"], dtype=torch.float)
    else:
        weights = batch[LABEL_WEIGHTS]
    with torch.no_grad():
        expected = _hand_loss(run.trainer.model, batch, weights)
        loss = run.trainer.compute_loss(run.trainer.model, dict(batch))
        plain = _hand_loss(run.trainer.model, batch, torch.ones_like(weights))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    if w != 1.0:  # and not the plain mean: the weight moved it
        assert abs(float(plain) - float(expected)) > 1e-4


def test_the_weight_sits_on_the_verdict_in_both_answer_modes(built: dict[str, Any]) -> None:
    run, rows = built["30.0"]
    batch = run.trainer.data_collator(rows)
    tok = run.trainer.data_collator.builder.tokenizer
    for i, row in enumerate(rows):
        heavy = (batch[LABEL_WEIGHTS][i] == 30.0).nonzero().flatten().tolist()
        assert len(heavy) == 1
        verdict = row["completion"][verdict_offset(row["completion"]):].split("\n")[0]
        assert tok.decode(batch["labels"][i, heavy]) == verdict  # VETO or ALLOW
        answer = batch["labels"][i] != IGNORE_INDEX
        assert torch.equal(batch[LABEL_WEIGHTS][i] > 0, answer)  # every answer token counts


def test_unit_weights_leave_trl_loss_unchanged() -> None:
    w = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert torch.equal(token_weight_scale(w), w)
    w[0, 1] = 4.0  # sum(w) = 6 over 3 tokens: factors 4 * 3/6 and 3/6
    torch.testing.assert_close(token_weight_scale(w),
                               torch.tensor([[0.0, 2.0, 0.5], [0.0, 0.0, 0.5]]))


def test_the_option_is_sft_only_and_needs_trl_default_loss(tiny_qwen2_5_vl: Path) -> None:
    from guard.errors import ConfigError

    cfg = _cfg(tiny_qwen2_5_vl, verdict_loss_weight=5.0)
    with pytest.raises(ConfigError, match=r"verdict_loss_weight is for sft"):
        load_run_config({**cfg, "method": "dpo"})
    with pytest.raises(ConfigError, match=r"needs trainer.loss_type nll"):
        load_run_config({**cfg, "trainer": {**cfg["trainer"], "loss_type": "dft"}})
    with pytest.raises(ConfigError, match=r"verdict_loss_weight"):
        load_run_config(_cfg(tiny_qwen2_5_vl, verdict_loss_weight=0))
