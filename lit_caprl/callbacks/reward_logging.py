"""Reward diagnostics per rollout: each term's mean/std, dead groups, lengths, truncation, samples."""

from __future__ import annotations

import lightning as L
import torch


class RewardLoggingCallback(L.Callback):
    """Logs what a GRPO user watches to tell learning from collapse or reward hacking.

    Args:
        samples_every: print (and send to loggers that take text) a few captions every N rollout steps.
        num_samples: how many captions with their rewards.
    """

    def __init__(self, samples_every: int = 10, num_samples: int = 3) -> None:
        self.samples_every, self.num_samples = samples_every, num_samples

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict, batch_idx: int
    ) -> None:
        ro = batch.get("rollout")
        if ro is None:
            return
        n = len(ro.texts)
        log = dict(batch_size=n, on_step=True, on_epoch=False)
        for name, values in ro.terms.items():
            finite = values.float()[torch.isfinite(values)]  # a failed term is excluded, and counted
            if len(finite):
                pl_module.log(f"reward/{name}/mean", finite.mean(), **log)
                pl_module.log(f"reward/{name}/std", finite.std() if len(finite) > 1 else finite.new_zeros(()), **log)
        pl_module.log("reward/frac_zero_std_groups", (ro.rewards.std(dim=1) == 0).float().mean(), **log)
        pl_module.log("completions/mean_length", ro.completions.lengths.float().mean(), prog_bar=True, **log)
        pl_module.log("completions/truncated_ratio", ro.completions.truncated.float().mean(), **log)
        step = pl_module.rollout_step
        if self.samples_every and step % self.samples_every == 0 and trainer.is_global_zero:
            rewards = ro.rewards.flatten().tolist()
            for i in torch.linspace(0, n - 1, self.num_samples).long().tolist():
                print(f"[rollout {step}] reward={rewards[i]:.3f} adv={float(ro.advantages[i]):+.2f} | {ro.texts[i]}")
