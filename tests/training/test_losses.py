"""training.losses on hand-made tensors: advantages, CASPO token rewards, mixing, PPO-clip."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training import losses  # noqa: E402


def test_group_advantages_normalise_within_each_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = losses.group_advantages(rewards, 4, eps=0.0)
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2: all equal -> 0
    z = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([z, -z, z, -z, 0, 0, 0, 0]), atol=1e-6)


def test_group_advantages_skip_unscorable_completions() -> None:
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.5])
    adv = losses.group_advantages(rewards, 4, scale="none")
    assert adv[1] == 0.0
    assert torch.allclose(adv[[0, 2, 3]], torch.tensor([0.5, -0.5, 0.0]))


def test_group_advantages_scales() -> None:
    rewards = torch.tensor([2.0, 0.0, 1.0, 1.0])
    assert torch.allclose(losses.group_advantages(rewards, 2, scale="none"),
                          torch.tensor([1.0, -1.0, 0.0, 0.0]))
    batch = losses.group_advantages(rewards, 2, scale="batch", eps=0.0)
    assert torch.allclose(batch, torch.tensor([1.0, -1.0, 0.0, 0.0]) / rewards.std())
    with pytest.raises(ValueError, match="groups of 3"):
        losses.group_advantages(rewards, 3)
    with pytest.raises(ValueError, match="scale"):
        losses.group_advantages(rewards, 2, scale="bogus")  # type: ignore[arg-type]


def test_token_rewards_clip_bonus_and_mask() -> None:
    teacher = torch.tensor([[-1.0, -0.1, -9.0], [-2.0, -5.0, 0.0]], requires_grad=True)
    student = torch.tensor([[-2.0, -8.0, -1.0], [-2.0, -1.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r = losses.token_rewards(teacher, student, mask, clip=(-3.0, 5.0), bonus=0.1)
    want = torch.tensor([[1.0 + 0.1, 5.0 + 0.1, -3.0 + 0.1], [0.0 + 0.1, -3.0 + 0.1, 0.0]])
    assert torch.allclose(r, want)
    assert not r.requires_grad  # a reward, never a gradient path
    with pytest.raises(ValueError, match="lo must be"):
        losses.token_rewards(teacher, student, mask, clip=(1.0, 0.0))


def test_group_token_advantages_pool_every_token_of_the_group() -> None:
    # one group of two completions; real tokens 1, 2 | 3 -> mean 2, std 1
    rewards = torch.tensor([[1.0, 2.0, 7.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = losses.group_token_advantages(rewards, mask, 2, eps=0.0)
    assert torch.allclose(adv, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    # groups are independent, and a uniform group gets nothing
    both = losses.group_token_advantages(
        torch.cat([rewards, torch.full((2, 3), 4.0)]), torch.cat([mask, torch.ones(2, 3)]), 2)
    assert torch.allclose(both[2:], torch.zeros(2, 3))
    assert torch.allclose(both[:2], adv, atol=1e-3)


def test_mix_advantages_interpolates_between_grpo_and_distillation() -> None:
    outcome = torch.tensor([1.0, -1.0])
    token = torch.tensor([[0.5, -0.5], [2.0, 3.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert torch.allclose(losses.mix_advantages(outcome, token, mask, 0.0),
                          torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
    assert torch.allclose(losses.mix_advantages(outcome, token, mask, 1.0),
                          torch.tensor([[0.5, -0.5], [2.0, 0.0]]))
    assert torch.allclose(losses.mix_advantages(outcome, token, mask, 0.25),
                          torch.tensor([[0.875, 0.625], [-0.25, 0.0]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        losses.mix_advantages(outcome, token, mask, 1.5)
    # one λ per row: GRPO on the first (labelled), distillation on the second
    assert torch.allclose(losses.mix_advantages(outcome, token, mask, torch.tensor([0.0, 1.0])),
                          torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        losses.mix_advantages(outcome, token, mask, torch.tensor([0.0, -0.1]))


def test_ppo_clip_on_policy_is_the_policy_gradient() -> None:
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 4.0], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, stats = losses.ppo_clip_loss(logps, logps.detach(), adv, mask, aggregation="token")
    # ratio 1: loss = -mean of the real tokens' advantages, gradient -A / n_tokens
    assert torch.isclose(loss, torch.tensor(-(1.0 - 2.0 + 3.0) / 3))
    loss.backward()
    assert torch.allclose(logps.grad, -adv * mask / 3)
    assert stats["ratio"] == 1.0 and stats["clip_low"] == 0 and stats["clip_high"] == 0


def test_ppo_clip_sequence_aggregation_weighs_completions_equally() -> None:
    logps = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    seq, _ = losses.ppo_clip_loss(logps, logps.detach(), adv, mask, aggregation="sequence")
    tok, _ = losses.ppo_clip_loss(logps, logps.detach(), adv, mask, aggregation="token")
    assert torch.isclose(seq, torch.tensor(-(1.0 + 4.0) / 2))
    assert torch.isclose(tok, torch.tensor(-(3.0 + 4.0) / 4))


def test_ppo_clip_stops_the_gradient_only_where_the_ratio_left_the_trust_region() -> None:
    old = torch.zeros(1, 4)
    logps = torch.tensor([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)]],
                         requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = losses.ppo_clip_loss(logps, old, adv, torch.ones(1, 4),
                                       epsilon_low=0.2, epsilon_high=0.2)
    # per token: -min(r A, clip(r) A) = -1.2, 1.5, -0.5, 0.8
    assert torch.isclose(loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8) / 4))
    loss.backward()
    # clipped (no gradient): ratio above 1+eps with A > 0, below 1-eps with A < 0
    assert logps.grad[0, 0] == 0 and logps.grad[0, 3] == 0
    assert torch.allclose(logps.grad[0, [1, 2]], torch.tensor([1.5, -0.5]) / 4)
    assert torch.isclose(stats["clip_high"], torch.tensor(0.25))
    assert torch.isclose(stats["clip_low"], torch.tensor(0.25))


def test_ppo_clip_accepts_sequence_advantages_and_token_weights() -> None:
    logps = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    seq_adv, _ = losses.ppo_clip_loss(logps, logps, torch.tensor([1.0, 3.0]), mask)
    assert torch.isclose(seq_adv, torch.tensor(-2.0))
    weighted, _ = losses.ppo_clip_loss(logps, logps, torch.tensor([1.0, 3.0]), mask,
                                       token_weights=torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.isclose(weighted, torch.tensor(-1.5))


def test_kl_k3_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    ref = torch.tensor([-1.0, -2.0, -0.1])
    assert torch.allclose(losses.kl_k3(ref, ref), torch.zeros(3))
    d = torch.tensor([0.5, -0.5, 2.0])
    kl = losses.kl_k3(ref - d, ref)
    assert torch.allclose(kl, torch.exp(d) - d - 1)
    assert bool((kl > 0).all())


def test_masked_mean_ignores_padding_and_empty_masks() -> None:
    x = torch.tensor([[1.0, 100.0], [3.0, 5.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    assert torch.isclose(losses.masked_mean(x, mask), torch.tensor(3.0))
    assert torch.allclose(losses.masked_mean(x, mask, dim=1), torch.tensor([1.0, 4.0]))
    assert losses.masked_mean(x, torch.zeros(2, 2)) == 0.0


def test_verdict_kl_is_the_forward_kl_and_reaches_a_saturated_student() -> None:
    teacher = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), -1)
    logits = torch.tensor([[12.0, -6.0, -6.0], [0.0, 0.0, 0.0]], requires_grad=True)
    student = torch.log_softmax(logits, -1)
    kl = losses.verdict_kl(teacher, student)
    expected = torch.nn.functional.kl_div(student, teacher, log_target=True,
                                          reduction="batchmean")
    assert torch.allclose(kl, expected)
    assert losses.verdict_kl(teacher, teacher).abs() < 1e-7
    # per-row weights (each row's λ): a row with weight 0 contributes nothing
    assert torch.isclose(losses.verdict_kl(teacher, student, torch.tensor([0.0, 2.0])),
                         kl * 0 + 2 * (teacher.exp()[1] * (teacher[1] - student[1])).sum() / 2)
    kl.backward()
    # Row 0: the student is sure of token 0 (p(token 1) ~ 1e-8). The dense term still moves
    # token 1's logit by (p_student - p_teacher) / B = -0.114 / 2; a policy gradient on the
    # sampled token 0 would move it by -p_student(token 1) ~ 1e-8.
    assert logits.grad is not None
    assert torch.isclose(logits.grad[0, 1], torch.tensor(-0.1142 / 2), atol=1e-3)
    sampled = torch.autograd.grad(torch.log_softmax(logits, -1)[0, 0], logits)[0]
    assert abs(sampled[0, 1]) < 1e-6
