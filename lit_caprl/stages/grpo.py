"""GRPO: the policy update over a rollout batch that `RolloutCallback` attached.

`training_step` reads top to bottom: the loss mask and divisor, old and reference log-probs,
then `mu` epochs, each one optimizer step over micro-batches (`policy_epoch`). Manual
optimization, because one batch makes several steps. The math is in `losses.py`.
"""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

from lit_caprl.callbacks.rollout import RolloutCallback
from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.lora import LoRA, reference_mode
from lit_caprl.models.sharding import average_gradients, is_sharded, max_over_ranks, shard
from lit_caprl.rollout import Rollout, RolloutConfig, ScaleRewards
from lit_caprl.stages import losses
from lit_caprl.stages.optim import Optim
from lit_caprl.stages.policy import PolicyStage


class GRPOStage(PolicyStage, L.LightningModule):
    """Group-relative policy optimisation of a captioner against frozen rewards.

    Args:
        model, init_from, dtype: the policy and the weights it starts from (see `SFTStage`).
        reward: a frozen reward module (e.g. `CapRLQAReward`); it is a submodule but never trained.
        num_generations: G, captions sampled per image (CapRL: 8).
        max_new_tokens: caption budget; a caption without EOS by then counts as truncated.
        temperature, top_p: sampling settings; the policy's log-probs use the same temperature.
        optim: optimizer settings (`Optim`; a constant rate after warm-up, as in CapRL++).
        beta: KL coefficient (k3) to the initial policy (a frozen copy, or the policy with LoRA adapters
            disabled); 0 holds no reference at all.
        epsilon_low, epsilon_high: clip range of the ratio (DAPO's clip-higher when high > low).
        mu: inner epochs per rollout batch; with 1 the ratio is exactly 1 and no old log-probs are computed.
        loss_type: grpo | bnpo | dr_grpo | dapo aggregation (see `losses.loss_divisor`).
        scale_rewards, advantage: group | batch | none scaling; grpo (mean baseline) or rloo.
        mask_truncated: completions that hit the token budget without EOS get no gradient.
        micro_batch_size: sequences per forward/backward, rounded down to whole groups (at least one), whose
            prompts are encoded once per group; gradients accumulate to one step per epoch.
        max_rollout_steps: stop after this many rollout batches (Lightning's `max_steps` counts optimizer steps).
        shard_reference: under FSDP2, shard the reference model on its own instead of replicating it.
        seed: rollout sampling seed; rollout i on rank r draws from the stream (seed, r, i), so ranks
            sample independently and a resumed run draws what the uninterrupted run drew.
        lora, gradient_checkpointing: LoRA/QLoRA and memory options (see `SFTStage`); with LoRA the
            reference is the policy with its adapters disabled.
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
        optim: Optim = Optim(),
        beta: float = 0.0,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        mu: int = 1,
        loss_type: losses.LossType = "dapo",
        scale_rewards: ScaleRewards = "group",
        advantage: str = "grpo",
        mask_truncated: bool = False,
        micro_batch_size: int = 64,
        max_rollout_steps: int | None = None,
        shard_reference: bool = False,
        seed: int = 0,
        lora: LoRA | None = None,
        gradient_checkpointing: bool = False,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2 to compare captions of one image")
        self.save_hyperparameters(ignore=["reward"])
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave out the frozen reward and reference
        self.setup_policy(model, init_from, dtype, lora, gradient_checkpointing, optim, reference=beta > 0)
        self.reward = reward
        self.rollout_config = RolloutConfig(
            num_generations, max_new_tokens, temperature, top_p, scale_rewards, advantage, seed
        )
        self.rollout_step = 0

    def configure_callbacks(self) -> list[L.Callback]:
        """Every GRPO step needs a rollout: a trainer without a `RolloutCallback` gets the default one."""
        return [] if any(isinstance(c, RolloutCallback) for c in self.trainer.callbacks) else [RolloutCallback()]

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        """One rollout batch (attached by `RolloutCallback`) -> `mu` optimizer steps."""
        ro, hp = batch["rollout"], self.hparams
        mask = self.loss_mask(ro)
        divisor = self.loss_divisor(mask)
        old = self.sequence_logprobs(self.adapter, ro) if hp.mu > 1 else None  # None: the ratio is exactly 1
        ref = self.reference_logprobs(ro) if hp.beta > 0 else None
        stats: dict[str, list[Tensor]] = {"loss": [], "kl": [], "clip_fraction": [], "entropy_proxy": []}
        for _ in range(hp.mu):
            self.policy_epoch(ro, mask, divisor, old, ref, stats)
        self.rollout_step += 1
        self._log(ro, stats)
        if hp.max_rollout_steps is not None and self.rollout_step >= hp.max_rollout_steps:
            self.trainer.should_stop = True
        return {"rollout": ro}

    def loss_mask(self, ro: Rollout) -> Tensor:
        """The completion tokens that get gradient: all, or none of a truncated one (`mask_truncated`)."""
        mask = ro.completions.mask.clone()
        if self.hparams.mask_truncated:
            mask[ro.completions.truncated] = 0
        return mask

    def loss_divisor(self, mask: Tensor) -> Tensor:
        """The whole rollout's divisor for `loss_type`; dapo counts the tokens of every rank, over
        the world size because gradients are averaged over ranks."""
        hp = self.hparams
        global_tokens = None
        if hp.loss_type == "dapo":
            global_tokens = self.trainer.strategy.reduce(mask.sum().float(), reduce_op="sum") / self.trainer.world_size
        return losses.loss_divisor(hp.loss_type, mask, hp.max_new_tokens, global_tokens).to(self.device)

    def sequence_logprobs(self, adapter: VLMAdapter, ro: Rollout) -> Tensor:
        """Per-token log-probs of the whole rollout under `adapter`'s model, without gradient."""
        width = ro.completions.ids.shape[1]
        chunks = []
        with torch.no_grad():
            for idx, weight in self.micro_batches(len(ro.texts)):
                lp = self.logprobs(adapter, ro, idx)
                if weight:
                    chunks.append(F.pad(lp, (0, width - lp.shape[1])))
        return torch.cat(chunks)

    def reference_logprobs(self, ro: Rollout) -> Tensor:
        """Per-token log-probs under the reference: the frozen copy, or the policy without adapters."""
        with reference_mode(self.policy):
            return self.sequence_logprobs(self.ref_adapter or self.adapter, ro)

    def policy_epoch(self, ro: Rollout, mask: Tensor, divisor: Tensor, old, ref, stats: dict) -> None:
        """One optimizer step over the rollout: micro-batch losses and backward passes (gradients
        synchronised once, after the last), a non-finite check, clipping, the step."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        chunks = self.micro_batches(len(ro.texts), shuffle=True)
        for i, (idx, weight) in enumerate(chunks):
            logp = self.logprobs(self.adapter, ro, idx)
            w = logp.shape[1]
            m = mask[idx, :w]
            loss, metrics = losses.grpo_loss(
                logp,
                logp.detach() if old is None else old[idx, :w],
                ro.advantages[idx],
                m,
                None if ref is None else ref[idx, :w],
                self.hparams.beta,
                self.hparams.epsilon_low,
                self.hparams.epsilon_high,
                self.hparams.loss_type,
                divisor,
            )
            self.accumulate(loss * weight, last=i == len(chunks) - 1)
            if weight:
                stats["loss"].append(loss.detach())
                stats["clip_fraction"].append(metrics["clip_fraction"])
                stats["entropy_proxy"].append(losses.masked_mean(-logp.detach(), m))
                if "kl" in metrics:
                    stats["kl"].append(metrics["kl"])
        if isinstance(self.trainer.strategy, DDPStrategy):
            average_gradients(self.policy.parameters())
        if not self.nonfinite.ok(torch.stack(stats["loss"]).sum(), self.policy.parameters()):
            opt.zero_grad()  # a NaN reward or an overflow costs this step, not the run
            return
        if self.optim.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.optim.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()

    def accumulate(self, loss: Tensor, last: bool) -> None:
        """Accumulate one micro-batch's gradient; ranks exchange gradients only after the `last`
        (FSDP2 reduce-scatters then; under DDP the stage averages them itself)."""
        if is_sharded(self.policy):
            self.policy.set_requires_gradient_sync(last)
        ddp = isinstance(self.trainer.strategy, DDPStrategy)
        with self.trainer.strategy.block_backward_sync() if ddp else nullcontext():
            self.manual_backward(loss)

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

    def logprobs(self, adapter: VLMAdapter, ro: Rollout, idx: Tensor) -> Tensor:
        """Per-token log-probs of rollout rows `idx` (whole groups), trimmed to their longest
        completion; each prompt is encoded once and shared by its G completions (not with
        gradient checkpointing, which drops the KV cache the sharing needs)."""
        checkpointing = adapter.base.is_activation_checkpointing and torch.is_grad_enabled()
        group = 1 if checkpointing else self.hparams.num_generations
        prompts, completions = ro.prompts.select(idx), ro.completions.select(idx, trim=True)
        return adapter.completion_logprobs(prompts, completions, self.hparams.temperature, group=group)

    def configure_model(self) -> None:
        """Under FSDP2 the policy is one root (see `PolicyStage`); the reference is its own root
        when `shard_reference`, else replicated. The reward stays replicated: its micro-batching
        follows each rank's caption count, which can differ between ranks."""
        super().configure_model()
        if self.device_mesh is not None and self.ref is not None and self.hparams.shard_reference:
            shard(self.ref, self.device_mesh["data_parallel"])

    def _log(self, ro: Rollout, stats: dict[str, list[Tensor]]) -> None:
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
