"""Advantages and losses of GRPO and CASPO as pure tensor functions.

Nothing here touches a model, a trainer or a process group: each function maps tensors to
tensors, so it is unit-tested on hand-made numbers (`tests/training/test_losses.py`) and the
trainers only orchestrate. Shapes: ``B`` completions (``G`` per prompt, consecutive, as trl's
sampler lays them out), ``T`` completion tokens; ``mask`` is 1 on real completion tokens.

CASPO (Consequence-Aware Safety Policy Optimization), as this project implements it:

1. **Outcome advantage** (GRPO): a scalar reward per completion (verdict right, hazard category
   right, well-formed), normalised within its prompt's group: ``A_i = (r_i - mean_g) / (std_g +
   eps)`` (`group_advantages`).
2. **Token reward** (self-distillation from a dynamic reference): the same model, prompted with a
   safety constitution the student never sees, scores the student's own tokens:
   ``r_t = clip(log p_teacher(y_t) - log p_student(y_t), lo, hi) + bonus`` (`token_rewards`).
3. **Token advantage**: token rewards normalised over *all* tokens of the prompt's group
   (`group_token_advantages`), so a group whose tokens the teacher likes uniformly gets no signal.
4. **Mixing**: ``A_{i,t} = (1 - λ) A_i + λ A^tok_{i,t}`` (`mix_advantages`). λ = 0 is plain
   GRPO; λ = 1 is pure constitution self-distillation (reported to collapse entropy).
5. **Loss**: PPO-clip on the token advantages (`ppo_clip_loss`), plus an optional k3 KL to a
   frozen reference (`kl_k3`).

SFT with the verdict weighted up (`token_weight_scale`, ``data.verdict_loss_weight``): the
answer's cross entropy as a weighted mean, the verdict token weighing more.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token", "sequence"]
RewardScale = Literal["group", "batch", "none"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (0 where nothing is masked in).

    Args:
        x: Values.
        mask: Same shape as `x` (or broadcastable), 1 to count a position, 0 to skip it.
        dim: Reduce along this dimension only; None reduces everything.

    Returns:
        The masked mean (a scalar when `dim` is None).
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def _check_groups(n: int, group_size: int) -> int:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if n % group_size:
        raise ValueError(f"{n} completions do not split into groups of {group_size}")
    return n // group_size


def _safe_div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``x / d``, and 0 where ``d`` is 0 (a group without spread carries no signal)."""
    d = d.expand_as(x) if d.dim() else d.expand(x.shape)
    return torch.where(d > 0, x / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(x))


def token_weight_scale(weights: torch.Tensor) -> torch.Tensor:
    """Per-token factors that turn trl SFT's token mean into a weighted mean.

    trl's loss is ``sum(l) / N``: ``N`` the micro-batch's labelled tokens ``n``, or
    ``num_items_in_batch`` (the whole accumulated batch's) when the trainer passes it. With
    each token's loss multiplied by ``w n / sum(w)`` it is ``sum(w l) / sum(w)`` for one
    micro-batch, and ``sum(w l) n / (sum(w) N)`` under accumulation: the micro-batch's
    weighted mean, the micro-batches in trl's own proportions. All weights 1 give factor 1,
    trl's loss unchanged.

    Args:
        weights: ``(B, T)``, 0 where the token is not labelled.
    """
    labelled = (weights > 0).sum()
    if int(labelled) == 0:
        return weights
    return weights * (labelled / weights.sum())


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: RewardScale = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """GRPO advantages: each completion's reward relative to its prompt's group.

    NaN rewards mark completions no reward function could score (e.g. an item without a label):
    they are left out of their group's mean and std and get advantage 0, so they never move the
    policy and never bias the baseline of the others.

    Args:
        rewards: ``(B,)`` scalar rewards, groups of `group_size` consecutive completions.
        group_size: Completions per prompt (``G``).
        scale: "group" divides by the group's std (GRPO), "batch" by the whole batch's std,
            "none" only centres (Dr. GRPO).
        eps: Added to the std, so a group with equal rewards gets 0, not NaN.

    Returns:
        ``(B,)`` advantages.
    """
    n_groups = _check_groups(rewards.numel(), group_size)
    grouped = rewards.view(n_groups, group_size)
    valid = ~torch.isnan(grouped)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    count = valid.sum(1, keepdim=True).clamp(min=1)
    mean = filled.sum(1, keepdim=True) / count
    centred = torch.where(valid, grouped - mean, torch.zeros_like(grouped))
    if scale == "none":
        adv = centred
    elif scale == "group":
        # unbiased std, as trl's nanstd; a single valid sample has no spread
        var = (centred**2).sum(1, keepdim=True) / (count - 1).clamp(min=1)
        adv = _safe_div(centred, var.sqrt() + eps)
    elif scale == "batch":
        flat = grouped[valid]
        std = flat.std() if flat.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        adv = _safe_div(centred, std + eps)
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return torch.where(valid, adv, torch.zeros_like(adv)).view(-1)


def token_rewards(
    teacher_logps: torch.Tensor,
    student_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: tuple[float, float] = (-3.0, 5.0),
    bonus: float = 0.0,
) -> torch.Tensor:
    """CASPO's per-token reward: how much more the constitution-prompted teacher likes a token.

    ``r_t = clip(log p_teacher(y_t) - log p_student(y_t), lo, hi) + bonus`` on real tokens, 0
    on padding. The clip keeps one token the teacher finds very unlikely (or very likely) from
    dominating its group's normalisation.

    Args:
        teacher_logps: ``(B, T)`` teacher log-probabilities of the sampled tokens.
        student_logps: ``(B, T)`` student log-probabilities of the same tokens (at sampling time).
        mask: ``(B, T)`` 1 on real completion tokens.
        clip: ``(lo, hi)`` with lo <= hi.
        bonus: Constant added to every real token (COPSD adds a small one).

    Returns:
        ``(B, T)`` token rewards (detached: a reward, never a path for gradients).
    """
    lo, hi = clip
    if lo > hi:
        raise ValueError(f"clip = {clip}: lo must be <= hi")
    gap = (teacher_logps - student_logps).detach()
    reward = gap.clamp(min=lo, max=hi) + bonus
    return reward * mask.to(reward.dtype)


def group_token_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    eps: float = 1e-4,
    scale: bool = True,
) -> torch.Tensor:
    """Token rewards normalised over all real tokens of each prompt's group.

    Each group's tokens (every token of every one of its ``G`` completions) share one mean and
    one std, so the advantage says which tokens the teacher prefers *relative to the rest of the
    group's text*, and a group the teacher likes uniformly gets zero.

    Args:
        rewards: ``(B, T)`` token rewards.
        mask: ``(B, T)`` 1 on real tokens.
        group_size: Completions per prompt (``G``).
        eps: Added to the std.
        scale: Divide by the std (False only centres).

    Returns:
        ``(B, T)`` token advantages, 0 on padding.
    """
    b, t = rewards.shape
    n_groups = _check_groups(b, group_size)
    m = mask.to(rewards.dtype).reshape(n_groups, group_size * t)
    r = rewards.reshape(n_groups, group_size * t)
    count = m.sum(1, keepdim=True)
    mean = (r * m).sum(1, keepdim=True) / count.clamp(min=1.0)
    centred = (r - mean) * m
    if scale:
        var = (centred**2).sum(1, keepdim=True) / (count - 1).clamp(min=1.0)
        centred = _safe_div(centred, var.sqrt() + eps)
    return centred.reshape(b, t)


def mix_advantages(
    outcome: torch.Tensor,
    token: torch.Tensor,
    mask: torch.Tensor,
    lam: float | torch.Tensor,
) -> torch.Tensor:
    """``A_{i,t} = (1 - λ) A_i + λ A^tok_{i,t}`` on real tokens, 0 on padding.

    Args:
        outcome: ``(B,)`` sequence-level (GRPO) advantages.
        token: ``(B, T)`` token-level advantages.
        mask: ``(B, T)`` 1 on real tokens.
        lam: λ in [0, 1]: 0 is GRPO, 1 is pure self-distillation; a ``(B,)`` tensor gives
            each row its own.

    Returns:
        ``(B, T)`` mixed advantages.
    """
    lam_t = torch.as_tensor(lam, dtype=token.dtype, device=token.device)
    if bool(((lam_t < 0.0) | (lam_t > 1.0)).any()):
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if lam_t.dim() == 1:
        lam_t = lam_t.unsqueeze(1)
    mixed = (1.0 - lam_t) * outcome.unsqueeze(1) + lam_t * token
    return mixed * mask.to(mixed.dtype)


def verdict_kl(teacher_logps: torch.Tensor, student_logps: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of ``KL(teacher || student)`` between two ``(B, V)`` log-distributions,
    each row scaled by `weights` ``(B,)`` when given.

    The forward KL puts the student's mass wherever the teacher has some: a student sure of
    ALLOW is pulled toward VETO by the teacher's P(VETO) even though it never samples VETO.
    Gradient flows into `student_logps` only.
    """
    t = teacher_logps.detach()
    rows = (t.exp() * (t - student_logps)).sum(-1)
    if weights is not None:
        rows = rows * weights.to(rows.dtype)
    return rows.mean()


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate ``exp(d) - d - 1`` with ``d = ref - policy``.

    Schulman's k3 estimator: unbiased, always >= 0, and what GRPO/trl use.
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1.0


def ppo_clip_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    aggregation: Aggregation = "token",
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate on per-token advantages.

    ``loss_t = -min(ρ_t A_t, clip(ρ_t, 1 - ε_low, 1 + ε_high) A_t)`` with
    ``ρ_t = exp(logp_t - old_logp_t)``. On-policy (one update per rollout) ρ = 1 and the
    gradient is the plain policy gradient ``-A_t ∇ log p_t``.

    Args:
        logps: ``(B, T)`` current log-probabilities (with gradient).
        old_logps: ``(B, T)`` log-probabilities when the tokens were sampled (no gradient).
        advantages: ``(B, T)`` or ``(B,)`` (broadcast over tokens).
        mask: ``(B, T)`` 1 on tokens that count.
        epsilon_low: Lower clip.
        epsilon_high: Upper clip (DAPO's "clip higher" when larger than `epsilon_low`).
        aggregation: "token" averages over every real token of the batch (long answers weigh
            more); "sequence" averages within each completion, then over completions (GRPO).
        token_weights: Optional ``(B, T)`` multiplicative weights (e.g. truncated importance
            weights correcting vLLM's sampling mismatch).

    Returns:
        ``(loss, stats)``: a scalar, and detached ``clip_low`` / ``clip_high`` fractions and
        the mean ratio over real tokens.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps.detach())
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    if token_weights is not None:
        per_token = per_token * token_weights
    if aggregation == "token":
        loss = masked_mean(per_token, mask)
    elif aggregation == "sequence":
        loss = masked_mean(per_token, mask, dim=1).mean()
    else:
        raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
    with torch.no_grad():
        adv = advantages.expand_as(ratio)
        stats = {
            "clip_low": masked_mean(((ratio < 1 - epsilon_low) & (adv < 0)).float(), mask),
            "clip_high": masked_mean(((ratio > 1 + epsilon_high) & (adv > 0)).float(), mask),
            "ratio": masked_mean(ratio.detach(), mask),
        }
    return loss, stats


__all__ = [
    "group_advantages",
    "group_token_advantages",
    "kl_k3",
    "masked_mean",
    "mix_advantages",
    "ppo_clip_loss",
    "token_rewards",
    "token_weight_scale",
    "verdict_kl",
]
