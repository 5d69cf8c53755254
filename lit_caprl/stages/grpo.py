"""GRPO: the policy update over a rollout batch that `RolloutCallback` attached.

Manual optimization: `mu` inner epochs over each rollout, gradient accumulation over
micro-batches, one optimizer step per epoch. The math is in `losses.py`.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

from lit_caprl.models.adapter import Completions, PromptBatch, VLMAdapter
from lit_caprl.models.loading import load_policy
from lit_caprl.models.lora import LoRA, reference_mode
from lit_caprl.models.sharding import average_gradients, is_sharded, max_over_ranks, shard
from lit_caprl.rewards.base import freeze
from lit_caprl.stages import losses
from lit_caprl.stages.optim import NonFiniteGuard
from lit_caprl.stages.policy import PolicyStage


class GRPOStage(PolicyStage, L.LightningModule):
    """Group-relative policy optimisation of a captioner against frozen rewards.

    Args:
        model, init_from, dtype: the policy and the weights it starts from (see `SFTStage`).
        reward: a frozen reward module (e.g. `CapRLQAReward`); it is a submodule but never trained.
        num_generations: G, captions sampled per image (CapRL: 8).
        max_new_tokens: caption budget; a caption without EOS by then counts as truncated.
        temperature, top_p: sampling settings; the policy's log-probs use the same temperature.
        lr, weight_decay, warmup_steps, schedule: AdamW; `constant` after warm-up as in CapRL++, or `cosine`.
        vision_lr: learning rate of the vision tower and its projector (None: `lr`).
        beta: KL coefficient (k3) to the initial policy (a frozen copy, or the policy with LoRA adapters
            disabled); 0 holds no reference at all.
        epsilon_low, epsilon_high: clip range of the ratio (DAPO's clip-higher when high > low).
        mu: inner epochs per rollout batch; with 1 the ratio is exactly 1 and no old log-probs are computed.
        loss_type: grpo | bnpo | dr_grpo | dapo aggregation (see `losses.loss_divisor`).
        scale_rewards, advantage: group | batch | none scaling; grpo (mean baseline) or rloo.
        mask_truncated: completions that hit the token budget without EOS get no gradient.
        micro_batch_size: sequences per forward/backward, rounded down to whole groups (at least one), whose
            prompts are encoded once per group; gradients accumulate to one step per epoch.
        max_grad_norm: gradient-norm clip (0 disables).
        max_bad_steps: steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
        max_rollout_steps: stop after this many rollout batches (Lightning's `max_steps` counts optimizer steps).
        shard_reference: under FSDP2, shard the reference model on its own instead of replicating it.
        seed: rollout sampling seed; rollout i on rank r draws from the stream (seed, r, i), so ranks
            sample independently and a resumed run draws what the uninterrupted run drew.
        lora, gradient_checkpointing, optimizer: LoRA/QLoRA and memory options (see `SFTStage`); with
            LoRA the reference is the policy with its adapters disabled.
    """

    def __init__(
        self,
        model: str,
        reward: torch.nn.Module,
        init_from: str | None = None,
        num_generations: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        lr: float = 1e-5,
        vision_lr: float | None = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: str = "constant",
        beta: float = 0.0,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        mu: int = 1,
        loss_type: losses.LossType = "dapo",
        scale_rewards: losses.ScaleRewards = "group",
        advantage: str = "grpo",
        mask_truncated: bool = False,
        micro_batch_size: int = 64,
        max_grad_norm: float = 1.0,
        max_bad_steps: int = 10,
        max_rollout_steps: int | None = None,
        shard_reference: bool = False,
        seed: int = 0,
        lora: LoRA | None = None,
        gradient_checkpointing: bool = False,
        optimizer: str = "adamw",
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2 to compare captions of one image")
        self.save_hyperparameters(ignore=["reward"])
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave out the frozen reward and reference
        self.adapter = load_policy(model, init_from, dtype, lora=lora, gradient_checkpointing=gradient_checkpointing)
        self.policy = self.adapter.model.train()
        self.reward = reward
        # With LoRA the reference is the policy with its adapters disabled: no second copy.
        self.ref = freeze(copy.deepcopy(self.policy)) if beta > 0 and lora is None else None
        self.ref_adapter = VLMAdapter(self.ref, self.adapter.processor) if self.ref is not None else None
        self.rollout_step = 0
        self.nonfinite = NonFiniteGuard(max_bad_steps)

    def sequence_logprobs(
        self, adapter: VLMAdapter, prompts: PromptBatch, completions: Completions, temperature: float
    ) -> Tensor:
        """Per-token log-probs of a whole rollout under `adapter`'s model, without gradient."""
        width = completions.ids.shape[1]
        chunks = []
        with torch.no_grad():
            for idx, weight in self.micro_batches(len(prompts)):
                rows = completions.select(idx, trim=True)
                lp = self.logprobs(adapter, adapter.select(prompts, idx), rows, temperature)
                if weight:
                    chunks.append(F.pad(lp, (0, width - lp.shape[1])))
        return torch.cat(chunks)

    def reference_logprobs(self, prompts: PromptBatch, completions: Completions, temperature: float) -> Tensor:
        """Per-token log-probs under the reference: the frozen copy, or the policy without adapters."""
        with reference_mode(self.policy):
            return self.sequence_logprobs(self.ref_adapter or self.adapter, prompts, completions, temperature)

    def micro_batches(self, n: int, shuffle: bool = False) -> list[tuple[Tensor, float]]:
        """Row indices of `n` rollout rows in chunks of whole groups (about `micro_batch_size`
        rows each), so each chunk encodes every prompt and image once; `shuffle` permutes the
        groups. Each chunk has weight 1. A sharded policy runs collectives in every forward, so
        all ranks must run as many chunks as the busiest rank (dynamic sampling leaves ranks
        with different row counts): the others repeat their last chunk with weight 0."""
        g = self.hparams.num_generations
        groups = torch.randperm(n // g) if shuffle else torch.arange(n // g)
        rows = (groups[:, None] * g + torch.arange(g)).flatten().to(self.device)
        chunks = list(rows.split(max(self.hparams.micro_batch_size // g, 1) * g))
        extra = max_over_ranks(len(chunks)) - len(chunks) if is_sharded(self.policy) else 0
        return [(c, 1.0) for c in chunks] + [(chunks[-1], 0.0)] * extra

    def logprobs(self, adapter: VLMAdapter, prompts: PromptBatch, completions: Completions, temperature: float):
        """Log-probs of whole groups, each prompt encoded once and shared by its G completions
        (not with gradient checkpointing, which drops the KV cache the sharing needs)."""
        checkpointing = adapter.base.is_activation_checkpointing and torch.is_grad_enabled()
        group = 1 if checkpointing else self.hparams.num_generations
        return adapter.completion_logprobs(prompts, completions, temperature, group=group)

    def configure_model(self) -> None:
        """Under FSDP2 the policy is one root (see `PolicyStage`); the reference is its own root
        when `shard_reference`, else replicated. The reward stays replicated: its micro-batching
        follows each rank's caption count, which can differ between ranks."""
        super().configure_model()
        if self.device_mesh is not None and self.ref is not None and self.hparams.shard_reference:
            shard(self.ref, self.device_mesh["data_parallel"])

    def on_train_epoch_start(self) -> None:
        """Lightning sets every submodule to train mode at the start of training; the reward
        and reference models are instruments and stay in eval mode."""
        self.reward.eval()
        if self.ref is not None:
            self.ref.eval()

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        """Batches hold PIL images and records; the rollout encodes and places tensors itself."""
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> None:
        if "rollout" not in batch:
            raise RuntimeError("GRPOStage needs lit_caprl.callbacks.RolloutCallback in trainer.callbacks")
        ro, hp = batch["rollout"], self.hparams
        opt, sched = self.optimizers(), self.lr_schedulers()
        mask = ro.completions.mask.clone()
        if hp.mask_truncated:
            mask[ro.completions.truncated] = 0
        n = len(ro.prompts)
        global_tokens = None
        if hp.loss_type == "dapo":  # gradients are averaged over ranks: the global count over world size
            global_tokens = self.trainer.strategy.reduce(mask.sum().float(), reduce_op="sum") / self.trainer.world_size
        divisor = losses.loss_divisor(hp.loss_type, mask, ro.max_new_tokens, global_tokens).to(self.device)
        stats: dict[str, list[Tensor]] = {"loss": [], "kl": [], "clip_fraction": [], "entropy_proxy": []}
        ddp = isinstance(self.trainer.strategy, DDPStrategy)
        for _ in range(hp.mu):
            opt.zero_grad()
            chunks = self.micro_batches(n, shuffle=True)
            for i, (idx, weight) in enumerate(chunks):
                if is_sharded(self.policy):  # reduce-scatter gradients once, after the last micro-batch
                    self.policy.set_requires_gradient_sync(i == len(chunks) - 1)
                comps = ro.completions.select(idx, trim=True)
                logp = self.logprobs(self.adapter, self.adapter.select(ro.prompts, idx), comps, ro.temperature)
                w = logp.shape[1]
                m = mask[idx, :w]
                old = ro.old_logp[idx, :w] if ro.old_logp is not None else logp.detach()
                ref = ro.ref_logp[idx, :w] if ro.ref_logp is not None else None
                loss, metrics = losses.grpo_loss(
                    logp, old, ro.advantages[idx], m, ref, hp.beta, hp.epsilon_low, hp.epsilon_high, hp.loss_type,
                    divisor,
                )  # fmt: skip
                loss = loss * weight
                with self.trainer.strategy.block_backward_sync() if ddp else nullcontext():
                    self.manual_backward(loss)
                if not weight:
                    continue
                stats["loss"].append(loss.detach())
                stats["clip_fraction"].append(metrics["clip_fraction"])
                stats["entropy_proxy"].append(losses.masked_mean(-logp.detach(), m))
                if "kl" in metrics:
                    stats["kl"].append(metrics["kl"])
            if ddp:
                average_gradients(self.policy.parameters())
            if not self.nonfinite.ok(torch.stack(stats["loss"]).sum(), self.policy.parameters()):
                opt.zero_grad()  # a NaN reward or an overflow costs this step, not the run
                continue
            if hp.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
        self.rollout_step += 1
        self._log(ro, stats)
        if hp.max_rollout_steps is not None and self.rollout_step >= hp.max_rollout_steps:
            self.trainer.should_stop = True

    def _log(self, ro, stats: dict[str, list[Tensor]]) -> None:
        n = len(ro.texts)
        self.log("rollout_step", float(self.rollout_step), batch_size=n)
        self.log("train/loss", torch.stack(stats["loss"]).sum() / self.hparams.mu, prog_bar=True, batch_size=n)
        self.log("train/reward", ro.rewards.mean(), prog_bar=True, batch_size=n)
        self.log("train/skipped_steps", float(self.nonfinite.skipped), batch_size=n)
        for key in ("clip_fraction", "kl", "entropy_proxy"):
            if stats[key]:
                self.log(f"train/{key}", torch.stack(stats[key]).mean(), batch_size=n)

    def configure_optimizers(self) -> dict:
        return self.policy_optimizer((self.hparams.max_rollout_steps or 1000) * self.hparams.mu)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rollout_step"] = self.rollout_step  # the sampling and reward-draw streams follow it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.rollout_step = checkpoint.get("rollout_step", 0)

