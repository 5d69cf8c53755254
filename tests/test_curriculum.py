"""Curriculum: batches obey the scheduled level; the adaptive rule advances on reward; state round-trips."""

import lightning as L
import pytest
import torch

from lit_caprl.callbacks import CurriculumCallback
from lit_caprl.data import ShapesPromptData


class LevelProbe(L.LightningModule):
    """Records the object counts of each batch and logs a scripted reward."""

    def __init__(self, rewards: list[float]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rewards, self.seen = rewards, []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch

    def training_step(self, batch, batch_idx):
        self.seen.append(max(r.meta["level"] for r in batch["record"]))
        self.log("train/reward", self.rewards[min(batch_idx, len(self.rewards) - 1)])
        return (self.w**2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(shapes_root, tmp_path, callback, rewards, steps):
    module = LevelProbe(rewards)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=4))
    return module, trainer


def test_milestones_schedule_the_object_count(shapes_root, tmp_path):
    cb = CurriculumCallback(levels=[1, 2, 4], milestones=[3, 6])
    module, trainer = _fit(shapes_root, tmp_path, cb, [0.0], steps=9)
    assert max(module.seen[:3]) == 1 and max(module.seen[3:6]) <= 2 and max(module.seen[6:]) > 2
    assert trainer.callback_metrics["curriculum/level"] == 4


def test_adaptive_mode_advances_when_the_reward_passes_the_threshold(shapes_root, tmp_path):
    cb = CurriculumCallback(levels=[1, 2, 3, 4], threshold=0.5, window=2)
    module, _ = _fit(shapes_root, tmp_path, cb, [0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9], steps=8)
    assert max(module.seen[:5]) == 1  # the 2-step window first reaches 0.9 after step 5
    assert cb.level == 3  # two windows of 0.9 (steps 5-6, 7-8): two advances
    restored = CurriculumCallback(levels=[1, 2, 3, 4], threshold=0.5, window=2)
    restored.load_state_dict(cb.state_dict())
    assert restored.level == cb.level and list(restored.recent) == list(cb.recent)


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="exactly one"):
        CurriculumCallback(levels=[1, 2])
    with pytest.raises(ValueError, match="increasing milestones"):
        CurriculumCallback(levels=[1, 2, 3], milestones=[5])


def test_level_survives_a_resume_from_checkpoint(shapes_root, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(steps, callbacks):
        return L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=tmp_path,
            callbacks=callbacks,
        )

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = CurriculumCallback(levels=[1, 2, 3, 4], threshold=0.5, window=1)
    trainer(4, [first, ckpt]).fit(LevelProbe([0.9]), datamodule=ShapesPromptData(shapes_root, batch_size=4))
    assert first.level == 4  # advanced once per step: 1 -> 2 -> 3 -> 4
    resumed_cb = CurriculumCallback(levels=[1, 2, 3, 4], threshold=0.5, window=1)
    module = LevelProbe([0.0])  # low reward now: the level can only come from the checkpoint
    trainer(6, [resumed_cb]).fit(
        module,
        datamodule=ShapesPromptData(shapes_root, batch_size=4),
        ckpt_path=str(tmp_path / "ckpt/epoch=0-step=4.ckpt"),
    )
    assert resumed_cb.level == 4 and max(module.seen) > 2
