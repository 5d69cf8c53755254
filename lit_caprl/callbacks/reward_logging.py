"""Reward diagnostics per rollout: each term's mean/std, dead groups, lengths, truncation, samples."""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import WandbLogger

from lit_caprl.rollout import Rollout


class RewardLoggingCallback(L.Callback):
    """Logs what a GRPO user watches to tell learning from collapse or reward hacking.

    Args:
        samples_every: at the first rollout step and every N after it, print a few captions and,
            with a `WandbLogger`, log a `samples` table (image, caption, reward, each term,
            advantage, length in tokens) gathered from every rank and logged by rank 0.
        num_samples: captions per rank each time.
    """

    def __init__(self, samples_every: int = 10, num_samples: int = 3) -> None:
        self.samples_every, self.num_samples = samples_every, num_samples

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict, batch_idx: int
    ) -> None:
        ro = outputs.get("rollout") if isinstance(outputs, dict) else None
        if ro is None:  # not a GRPO step
            return
        n = len(ro.texts)
        log = dict(batch_size=n, on_step=True, on_epoch=False)
        for name, values in ro.terms.items():
            finite = values.float()[torch.isfinite(values)]  # a failed term is excluded, and counted
            if len(finite):
                pl_module.log(f"reward/{name}/mean", finite.mean(), **log)
                pl_module.log(f"reward/{name}/std", finite.std() if len(finite) > 1 else finite.new_zeros(()), **log)
        pl_module.log("reward/frac_zero_std_groups", (ro.group_rewards.std(dim=1) == 0).float().mean(), **log)
        pl_module.log("completions/mean_length", ro.completions.lengths.float().mean(), prog_bar=True, **log)
        pl_module.log("completions/truncated_ratio", ro.completions.truncated.float().mean(), **log)
        step = pl_module.rollout_step
        if not self.samples_every or (step - 1) % self.samples_every:  # the first rollout, then every N
            return
        rows = self.sample_rows(ro)
        if trainer.is_global_zero:
            for r in rows:
                print(f"[rollout {step}] reward={r['reward']:.3f} adv={r['advantage']:+.2f} | {r['caption']}")
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        if dist.is_available() and dist.is_initialized():  # every rank takes part, rank 0 logs
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if trainer.is_global_zero:
            import wandb

            columns = list(rows[0])
            data = [[wandb.Image(r["image"]) if k == "image" else r[k] for k in columns] for r in rows]
            for lg in wandb_loggers:
                lg.log_table(key="samples", columns=columns, data=data, step=trainer.global_step)

    def sample_rows(self, ro: Rollout) -> list[dict]:
        """`num_samples` evenly spaced captions of this rank's rollout, as plain table rows."""
        n, g = len(ro.texts), ro.group_size
        rewards = ro.rewards.tolist()
        rows = []
        for i in torch.linspace(0, n - 1, self.num_samples).long().tolist():
            row = {"image": str(ro.records[i // g].image), "caption": ro.texts[i], "reward": rewards[i]}
            row |= {name: float(v[i]) for name, v in ro.terms.items()}
            row |= {"advantage": float(ro.advantages[i]), "tokens": int(ro.completions.lengths[i])}
            rows.append(row)
        return rows
