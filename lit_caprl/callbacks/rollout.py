"""Rollouts: image -> prompt -> G sampled captions -> rewards -> advantages, attached to the batch.

Runs at the start of every training batch, on every rank, under `torch.no_grad()` (not
`inference_mode`: the rollout's tensors enter the training forward afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from lit_caprl.mining import PairWriter, mine_groups
from lit_caprl.models.adapter import Completions, PromptBatch
from lit_caprl.sampling import sample_and_score
from lit_caprl.stages.losses import group_advantages


@dataclass
class Rollout:
    """One rollout batch: N = prompts * G sequences, grouped consecutively by prompt."""

    prompts: PromptBatch
    completions: Completions
    texts: list[str]
    rewards: Tensor  # [B, G]
    advantages: Tensor  # [N]
    terms: dict[str, Tensor]  # named reward parts, [N] each
    old_logp: Tensor | None  # [N, L]; None when the policy has not moved since sampling (mu == 1)
    ref_logp: Tensor | None  # [N, L]; None when beta == 0
    temperature: float
    max_new_tokens: int


class RolloutCallback(L.Callback):
    """Samples `num_generations` captions per prompt with the current policy and scores them.

    Args:
        num_generations: G, completions per prompt (CapRL: 8).
        max_new_tokens: completion budget; captions without EOS by then count as truncated.
        temperature, top_p: sampling settings; the policy's log-probs use the same temperature.
        pairs_dir: also mine DPO pairs (best vs worst caption of each group) from the scored
            rollouts into `pairs_dir/pairs.jsonl`, appended after every rollout step.
        pair_min_margin: keep a group's pair only if best - worst reward >= this.
    """

    def __init__(
        self,
        num_generations: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        pairs_dir: str | None = None,
        pair_min_margin: float = 0.0,
    ) -> None:
        if num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2 to compare completions of one prompt")
        self.num_generations, self.max_new_tokens = num_generations, max_new_tokens
        self.temperature, self.top_p = temperature, top_p
        self.pairs = PairWriter(pairs_dir) if pairs_dir else None
        self.pair_min_margin = pair_min_margin

    @torch.no_grad()
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        batch["rollout"] = self.rollout(pl_module, batch)

    @torch.no_grad()
    def rollout(self, module, batch: dict) -> Rollout:
        g = self.num_generations
        prompts, completions, texts, scored = sample_and_score(
            module.adapter, module.reward, batch["image"], batch["prompt"], batch["record"], g,
            self.max_new_tokens, self.temperature, self.top_p, module.rollout_step, module.device,
        )  # fmt: skip
        rewards = scored.rewards.to(module.device).view(-1, g)
        if self.pairs is not None and module.trainer.is_global_zero:
            pairs = mine_groups(batch["record"], texts, rewards.cpu(), self.pair_min_margin, module.hparams.model)
            self.pairs.append(pairs)
        hp = module.hparams
        advantages = group_advantages(rewards, hp.scale_rewards, hp.advantage).flatten()
        old_logp = (
            module.sequence_logprobs(module.adapter, prompts, completions, self.temperature) if hp.mu > 1 else None
        )
        ref_logp = (
            module.sequence_logprobs(module.ref_adapter, prompts, completions, self.temperature)
            if hp.beta > 0
            else None
        )
        return Rollout(prompts, completions, texts, rewards, advantages, scored.terms, old_logp, ref_logp,
                       self.temperature, self.max_new_tokens)  # fmt: skip
