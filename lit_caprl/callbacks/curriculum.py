"""Curriculum: train on easy records first (ShapesWorld: fewer objects), harder ones later."""

from __future__ import annotations

from collections import deque

import lightning as L


class CurriculumCallback(L.Callback):
    """Sets the DataModule's difficulty level (`datamodule.set_level`) as training goes.

    Two modes:
    - milestones: level `levels[k]` from global step `milestones[k-1]` on (`levels[0]` before the first);
    - adaptive (`threshold` set): advance one level when the mean reward of the last `window`
      rollout steps reaches `threshold` (the window restarts at each new level).
    Its state (level, recent rewards) is saved in checkpoints, so a resumed run continues at
    the same level. The level is logged as `curriculum/level`.

    Args:
        levels: difficulty levels in order (ShapesWorld: maximum object count, e.g. [1, 2, 3, 4]).
        milestones: global steps at which to move to the next level (len(levels) - 1 of them).
        threshold, window: the adaptive rule, on `train/reward`.
    """

    def __init__(
        self,
        levels: list[int],
        milestones: list[int] | None = None,
        threshold: float | None = None,
        window: int = 10,
    ) -> None:
        if (milestones is None) == (threshold is None):
            raise ValueError("give exactly one of milestones (step schedule) or threshold (adaptive)")
        if milestones is not None and (len(milestones) != len(levels) - 1 or milestones != sorted(milestones)):
            raise ValueError(f"need {len(levels) - 1} increasing milestones for levels {levels}, got {milestones}")
        self.levels, self.milestones, self.threshold, self.window = levels, milestones, threshold, window
        self.index = 0
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def level(self) -> int:
        return self.levels[self.index]

    def _apply(self, trainer: L.Trainer) -> None:
        trainer.datamodule.set_level(self.level)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        before = self.index
        if self.milestones is not None:
            self.index = sum(trainer.global_step >= m for m in self.milestones)
        else:
            reward = trainer.callback_metrics.get("train/reward")
            if reward is not None:
                self.recent.append(float(reward))
            full = len(self.recent) == self.window
            if full and sum(self.recent) / self.window >= self.threshold and self.index < len(self.levels) - 1:
                self.index += 1
                self.recent.clear()
        if self.index != before:
            self._apply(trainer)
        pl_module.log("curriculum/level", float(self.level), on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict:
        return {"index": self.index, "recent": list(self.recent)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.index = state_dict["index"]
        self.recent = deque(state_dict["recent"], maxlen=self.window)
