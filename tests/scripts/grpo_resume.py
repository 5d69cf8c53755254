"""A small GRPO run for the exact-resume test: frozen CapRL reader reward (shuffled draws)
plus a term drawing from the global torch, numpy and Python RNGs, mu=2 (shuffled
micro-batches), a step-milestone curriculum and a checkpoint after every step. Each step's
reward and loss are appended to `--metrics` as they happen. `--kill-at K` kills the process
with SIGKILL at the end of step K, before step K's checkpoint is written (Lightning runs
checkpoint callbacks last): a resumed run redoes step K from step K-1's."""

import argparse
import json
import os
import random
import signal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_caprl.callbacks import CurriculumCallback, RolloutCallback
from lit_caprl.data import ShapesPromptData
from lit_caprl.rewards import CapRLQAReward, CompositeReward, RewardOutput
from lit_caprl.stages import GRPOStage
from lit_caprl.stages.optim import Optim


class Jitter(torch.nn.Module):
    """A stochastic reward term (think of a sampled judge) that uses the global RNGs."""

    def forward(self, captions, records, step=0):
        n = len(captions)
        noise = (
            torch.rand(n)
            + torch.from_numpy(np.random.rand(n)).float()
            + torch.tensor([random.random() for _ in captions])
        )
        return RewardOutput(0.01 * noise, {"jitter": 0.01 * noise})


class Record(L.Callback):
    def __init__(self, path: str, kill_at: int | None) -> None:
        self.path, self.kill_at = path, kill_at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        row = {
            "step": module.rollout_step,
            "reward": float(m["train/reward"]),
            "loss": float(m["train/loss"]),
            "ids": [r.id for r in batch["rollout"].records],
            "level": int(m["curriculum/level"]),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if module.rollout_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: a preemption


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--reader", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--kill-at", type=int)
    p.add_argument("--resume")
    a = p.parse_args()
    L.seed_everything(0)
    reward = CompositeReward({"qa": CapRLQAReward(a.reader, num_draws=2), "jitter": Jitter()})
    module = GRPOStage(
        a.policy,
        reward,
        num_generations=4,
        max_new_tokens=8,
        beta=0.04,
        mu=2,
        micro_batch_size=4,
        max_rollout_steps=a.steps,
        optim=Optim(lr=1e-3),
    )
    checkpoints = ModelCheckpoint(dirpath=f"{a.root}/ckpt", save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=100,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=a.root,
        callbacks=[
            RolloutCallback(),
            CurriculumCallback(levels=[1, 2, 3], milestones=[2, 4]),
            checkpoints,
            Record(a.metrics, a.kill_at),
        ],
    )
    trainer.fit(module, datamodule=ShapesPromptData(a.data, batch_size=2), ckpt_path=a.resume)


if __name__ == "__main__":
    main()
