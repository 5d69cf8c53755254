"""The loss math as plain tensor functions: clipped surrogate, KL, aggregation, DPO.

No Lightning, no models. Per-token tensors are [N, L] with N = B*G sequences (B prompts, G
completions each) and a 0/1 `mask` over real tokens; advantages are in `lit_caprl.rollout`.
Formulas follow the GRPO / DAPO / Dr. GRPO and DPO / IPO / SLiC papers and TRL's `loss_type` names.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp; always >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """Per-token PPO loss -min(ratio*A, clip(ratio, 1-eps_low, 1+eps_high)*A) and where clipping bit.

    `advantages` is per sequence [N] (broadcast over tokens). With old_logp == logp.detach()
    (one inner epoch) the ratio is exactly 1 and the gradient is the plain policy gradient.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def loss_divisor(
    loss_type: LossType,
    mask: Tensor,
    max_completion_length: int | None = None,
    global_tokens: Tensor | float | None = None,
) -> Tensor:
    """What a rollout batch's loss is divided by, as each method defines it (`mask` is the whole
    batch's, [N, L]); `aggregate` divides every micro-batch's sum by it, so micro-batches add up
    to the batch's loss exactly.

    grpo:    N sequences (of each sequence's mean over its tokens: long answers weigh less per token).
    bnpo:    the tokens of this batch.
    dr_grpo: N * max_completion_length, a constant: no length bias.
    dapo:    `global_tokens`, the token count of the whole global batch (all ranks), so every token
             weighs the same however the batch is split; default: this batch's.
    """
    tokens = mask.sum().clamp(min=1).to(torch.get_default_dtype())
    if loss_type == "grpo":
        return torch.tensor(float(mask.shape[0]))
    if loss_type == "bnpo":
        return tokens
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        return torch.tensor(float(mask.shape[0] * max_completion_length))
    if loss_type == "dapo":
        return torch.as_tensor(global_tokens, dtype=tokens.dtype) if global_tokens is not None else tokens
    raise ValueError(f"unknown loss_type {loss_type!r}")


def aggregate(per_token: Tensor, mask: Tensor, loss_type: LossType, divisor: Tensor | float) -> Tensor:
    """A (micro-)batch's share of the loss: its summed per-token loss (grpo: the sum of each
    sequence's token mean) over the whole batch's `divisor` (`loss_divisor`)."""
    mask = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / divisor
    return (per_token * mask).sum() / divisor


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    loss_type: LossType = "dapo",
    divisor: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO objective and its diagnostics (clip fraction, mean KL) over masked tokens.
    `divisor`: the whole batch's `loss_divisor` when this is one micro-batch of it (default:
    this batch's own, which needs no `max_completion_length`: not for dr_grpo)."""
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    metrics = {}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask)
    metrics["clip_fraction"] = masked_mean(clipped, mask)
    divisor = loss_divisor(loss_type, mask) if divisor is None else divisor
    return aggregate(per_token, mask, loss_type, divisor), metrics


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """A reward model's pairwise loss: -log sigma(r_chosen - r_rejected), averaged over pairs
    (InstructGPT's reward model, TRL's `RewardTrainer`)."""
    return -F.logsigmoid(chosen - rejected).mean()


DPOLossType = Literal["sigmoid", "ipo", "hinge"]


def dpo_loss(
    chosen_logp: Tensor,
    rejected_logp: Tensor,
    ref_chosen_logp: Tensor,
    ref_rejected_logp: Tensor,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference loss and the implicit rewards beta * (log pi - log ref) of each side.

    Inputs are sequence log-probs [P] (summed over completion tokens; IPO callers pass the
    per-token mean, as the IPO paper and TRL do). With h = (chosen - rejected) - (ref_chosen - ref_rejected):
    sigmoid: -(1-ls) log sigma(beta h) - ls log sigma(-beta h)   (DPO; ls = conservative DPO's label noise)
    ipo:     (h - 1/(2 beta))^2                                   (IPO)
    hinge:   max(0, 1 - beta h)                                   (SLiC)
    """
    h = (chosen_logp - rejected_logp) - (ref_chosen_logp - ref_rejected_logp)
    if loss_type == "sigmoid":
        loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    chosen_rewards = beta * (chosen_logp - ref_chosen_logp).detach()
    rejected_rewards = beta * (rejected_logp - ref_rejected_logp).detach()
    return loss, chosen_rewards, rejected_rewards


def token_mean_nll(logp_sums: Tensor, tokens: Tensor) -> Tensor:
    """Negative log-likelihood per token over a batch of sequences (summed log-probs [P] and
    token counts [P]): the SFT term RPO adds to DPO, averaged over tokens as TRL does."""
    return -logp_sums.sum() / tokens.sum()
