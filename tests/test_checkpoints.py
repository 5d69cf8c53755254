"""Checkpoints are written atomically: a save killed half-way leaves the previous one loadable."""

import fsspec.implementations.local as local_fs
import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import model_parallel

from lit_caprl.data import ShapesReaderData
from lit_caprl.stages import SFTStage
from lit_caprl.stages.optim import Optim
from lit_caprl.strategies import AtomicModelParallelStrategy


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tiny_models, shapes_root, tmp_path, monkeypatch):
    module = SFTStage(tiny_models["qwen2"], optim=Optim(lr=1e-2, warmup_steps=20, schedule="cosine"))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=ShapesReaderData(shapes_root, batch_size=4))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)  # the next save would hold different weights

    def dies_half_way(self, data):
        original_write(self, data[: len(data) // 2])
        raise KeyboardInterrupt("killed during save")  # what a SIGTERM handler or Ctrl-C raises

    original_write = local_fs.LocalFileOpener.write
    monkeypatch.setattr(local_fs.LocalFileOpener, "write", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    monkeypatch.undo()

    reloaded = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert reloaded.keys() == saved.keys()
    assert all(torch.equal(reloaded[k], saved[k]) for k in saved)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_sharded_save_killed_midway_leaves_the_previous_checkpoint(tiny_models, shapes_root, tmp_path, monkeypatch):
    """FSDP2 (DCP) checkpoints: one directory of shards, swapped in whole or not at all."""
    module = SFTStage(tiny_models["qwen2"], optim=Optim(lr=1e-2, warmup_steps=20, schedule="cosine"))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=AtomicModelParallelStrategy(),
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=ShapesReaderData(shapes_root, batch_size=4))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = _files(path)
    assert path.is_dir() and len(saved) >= 2  # shards + Lightning's metadata

    def dies_half_way(state, where):
        (where / "__0_0.distcp").write_bytes(b"half a shard")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert _files(path) == saved

    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    trainer.save_checkpoint(path)  # a save that finishes replaces it, and leaves no temp dir behind
    assert _files(path).keys() == saved.keys() and _files(path) != saved
    assert sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == ["last.ckpt"]
