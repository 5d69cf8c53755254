"""A stage's progress as a small JSON file, for `lit-caprl pipeline` to show stages that run
side by side (their console output goes to log files) as one line each."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L


class ProgressFile(L.Callback):
    """Every `every_s` seconds write `{step, total, unit, metric, value, elapsed_s, eta_s}` to
    `path` (default `<default_root_dir>/progress.json`), atomically. GRPO counts rollout steps
    against `max_rollout_steps`; other stages optimizer steps against `max_steps`."""

    def __init__(self, path: str | None = None, every_s: float = 5.0) -> None:
        self.path, self.every_s = path, every_s
        self.start = self.last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self.last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s and trainer.is_global_zero:
            self.last = now
            self.write(trainer, pl_module, now)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write(trainer, pl_module, time.monotonic())

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> None:
        rollout_budget = getattr(pl_module.hparams, "max_rollout_steps", None)
        if rollout_budget:
            step, total, unit = pl_module.rollout_step, rollout_budget, "rollout steps"
        else:
            step, total, unit = trainer.global_step, trainer.max_steps, "steps"
        metric = next((k for k in ("train/reward", "train/loss") if k in trainer.callback_metrics), None)
        elapsed, total = now - self.start, total if total and total > 0 else None
        state = {
            "step": step,
            "total": total,
            "unit": unit,
            "metric": metric,
            "value": float(trainer.callback_metrics[metric]) if metric else None,
            "elapsed_s": round(elapsed, 1),
            "eta_s": round(elapsed / step * (total - step), 1) if step and total else None,
        }
        path = Path(self.path or Path(trainer.default_root_dir) / "progress.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)
