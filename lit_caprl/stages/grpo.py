"""GRPO: the policy update over a rollout batch that `RolloutCallback` attached.

Manual optimization: `mu` inner epochs over each rollout, gradient accumulation over
micro-batches, one optimizer step per epoch. The math is in `losses.py`.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_caprl.models.adapter import Completions, PromptBatch, VLMAdapter
from lit_caprl.models.loading import load_policy
from lit_caprl.rewards.base import freeze
from lit_caprl.stages import losses
from lit_caprl.stages.optim import NonFiniteGuard, adamw_schedule


class GRPOStage(L.LightningModule):
    """Group-relative policy optimisation of a captioner against frozen rewards.

    Args:
        model, init_from, dtype: the policy and the weights it starts from (see `SFTStage`).
        reward: a frozen reward module (e.g. `CapRLQAReward`); it is a submodule but never trained.
        num_generations: G, captions sampled per image (CapRL: 8).
        max_new_tokens: caption budget; a caption without EOS by then counts as truncated.
        temperature, top_p: sampling settings; the policy's log-probs use the same temperature.
        lr, weight_decay, warmup_steps, schedule: AdamW; `constant` after warm-up as in CapRL++, or `cosine`.
        beta: KL coefficient (k3) to a frozen copy of the initial policy; 0 holds no reference at all.
        epsilon_low, epsilon_high: clip range of the ratio (DAPO's clip-higher when high > low).
        mu: inner epochs per rollout batch; with 1 the ratio is exactly 1 and no old log-probs are computed.
        loss_type: grpo | bnpo | dr_grpo | dapo aggregation (see `losses.aggregate`).
        scale_rewards, advantage: group | batch | none scaling; grpo (mean baseline) or rloo.
        mask_truncated: completions that hit the token budget without EOS get no gradient.
        micro_batch_size: sequences per forward/backward; gradients accumulate to one step per epoch.
        max_grad_norm: gradient-norm clip (0 disables).
        max_bad_steps: steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
        max_rollout_steps: stop after this many rollout batches (Lightning's `max_steps` counts optimizer steps).
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
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2 to compare captions of one image")
        self.save_hyperparameters(ignore=["reward"])
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave out the frozen reward and reference
        self.adapter = load_policy(model, init_from, dtype)
        self.policy = self.adapter.model.train()
        self.reward = reward
        self.ref = freeze(copy.deepcopy(self.policy)) if beta > 0 else None
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
            for idx in torch.arange(len(prompts), device=self.device).split(self.hparams.micro_batch_size):
                lp = adapter.completion_logprobs(adapter.select(prompts, idx), _rows(completions, idx), temperature)
                chunks.append(F.pad(lp, (0, width - lp.shape[1])))
        return torch.cat(chunks)

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
        local_tokens = mask.sum().float()
        norm = {
            "bnpo": local_tokens,
            "dr_grpo": torch.tensor(float(n * ro.max_new_tokens)),
            # Gradients are averaged over ranks, so scale by world size to divide by the global count.
            "dapo": self.trainer.strategy.reduce(local_tokens, reduce_op="sum") / self.trainer.world_size,
        }.get(hp.loss_type)
        stats: dict[str, list[Tensor]] = {"loss": [], "kl": [], "clip_fraction": [], "entropy_proxy": []}
        for _ in range(hp.mu):
            opt.zero_grad()
            for idx in torch.randperm(n, device=self.device).split(hp.micro_batch_size):
                comps = _rows(ro.completions, idx)
                logp = self.adapter.completion_logprobs(self.adapter.select(ro.prompts, idx), comps, ro.temperature)
                w = logp.shape[1]
                m = mask[idx, :w]
                old = ro.old_logp[idx, :w] if ro.old_logp is not None else logp.detach()
                ref = ro.ref_logp[idx, :w] if ro.ref_logp is not None else None
                loss_type = "grpo" if hp.loss_type == "grpo" else "dapo"
                loss, metrics = losses.grpo_loss(
                    logp, old, ro.advantages[idx], m, ref, hp.beta, hp.epsilon_low, hp.epsilon_high,
                    loss_type, ro.max_new_tokens, None if norm is None else norm.to(self.device),
                )  # fmt: skip
                if hp.loss_type == "grpo":
                    loss = loss * len(idx) / n
                self.manual_backward(loss)
                stats["loss"].append(loss.detach())
                stats["clip_fraction"].append(metrics["clip_fraction"])
                stats["entropy_proxy"].append(losses.masked_mean(-logp.detach(), m))
                if "kl" in metrics:
                    stats["kl"].append(metrics["kl"])
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
        hp = self.hparams
        total = (hp.max_rollout_steps or 1000) * hp.mu
        return adamw_schedule(self.policy.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps, total, hp.schedule)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
        checkpoint["rollout_step"] = self.rollout_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.rollout_step = checkpoint.get("rollout_step", 0)


def _rows(c: Completions, idx: Tensor) -> Completions:
    """Rows `idx`, trimmed to their longest completion (no compute on all-padding columns)."""
    width = max(int(c.mask[idx].sum(-1).max()), 1)
    return Completions(c.ids[idx, :width], c.mask[idx, :width], c.truncated[idx])
