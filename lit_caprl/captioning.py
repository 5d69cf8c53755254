"""`lit-caprl caption`: caption a folder of images, a JSONL or any importable source with a
trained export, through Lightning's `predict`, so it runs on several devices like `fit`.

Output is JSONL, one `{"id", "image", "captions"}` line per image, appended and flushed batch
by batch. A rerun skips the ids already written (a line cut short by a kill is dropped and
redone), so a killed job continues where it stopped and writes each id exactly once. With
several ranks each writes `OUT.rank<r>` and rank 0 appends them to OUT at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from lit_caprl.data import prompts
from lit_caprl.data.datasets import ListDataset, collate
from lit_caprl.data.sources import source_records, written_ids
from lit_caprl.evaluate import caption_images, check_num_captions
from lit_caprl.models.loading import load_export
from lit_caprl.rollout import stream_seed


class Captioner(L.LightningModule):
    """A trained captioner (a `save_pretrained` export, or peft adapters on `base`) that writes
    `num_captions` captions per image; `temperature=0` is greedy (then one caption)."""

    def __init__(
        self,
        model: str,
        base: str | None = None,
        prompt: str = prompts.DEFAULT_CAPTION_PROMPT,
        num_captions: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        check_num_captions(num_captions, temperature)
        self.adapter = load_export(model, base, dtype)
        self.policy = self.adapter.model
        self.policy.eval()
        self.prompt, self.num_captions, self.max_new_tokens = prompt, num_captions, max_new_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed

    @torch.no_grad()
    def predict_step(self, batch: dict) -> list[dict]:
        """Each batch draws from its own seed stream (its first id), whatever ran before it."""
        torch.manual_seed(stream_seed(self.seed, batch["id"][0]))
        n = self.num_captions
        captions = caption_images(
            self.adapter, batch["image"], self.prompt, self.max_new_tokens, self.temperature, self.top_p, n
        )
        return [
            {"id": rid, "image": path, "captions": captions[i * n : (i + 1) * n]}
            for i, (rid, path) in enumerate(zip(batch["id"], batch["path"], strict=True))
        ]


class CaptionWriter(BasePredictionWriter):
    """Appends each batch's captions to this rank's file and flushes them to disk."""

    def __init__(self, out: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.out = Path(out)
        self.file = None

    def _path(self, trainer: L.Trainer) -> Path:
        return self.out if trainer.world_size == 1 else self.out.with_name(f"{self.out.name}.rank{trainer.global_rank}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self._path(trainer), "a", encoding="utf-8")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prediction))
        self.file.flush()
        os.fsync(self.file.fileno())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.file.close()
        trainer.strategy.barrier()
        if trainer.world_size > 1 and trainer.global_rank == 0:
            with open(self.out, "a", encoding="utf-8") as merged:
                for part in sorted(self.out.parent.glob(f"{self.out.name}.rank*")):
                    merged.write(part.read_text(encoding="utf-8"))
                    merged.flush()
                    os.fsync(merged.fileno())
                    part.unlink()


def caption(
    source: str,
    model: str,
    out: str,
    fmt: str = "jsonl",
    image_root: str | None = None,
    batch_size: int = 8,
    accelerator: str = "auto",
    devices: int | str = "auto",
    **captioner: object,
) -> int:
    """Caption every image of `source` not yet in `out`; returns how many were captioned now."""
    done = written_ids(Path(out))
    todo = [r for r in source_records(source, fmt, image_root) if r.id not in done]
    if not todo:
        print(f"{out}: every image already captioned")
        return 0
    module = Captioner(model, **captioner)
    loader = DataLoader(
        ListDataset(todo, lambda r: {"id": r.id, "path": str(r.image), "image": r.load_image()}),
        batch_size=batch_size,
        collate_fn=collate,
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        logger=False,
        callbacks=[CaptionWriter(out)],
        enable_model_summary=False,
    )
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return len(todo)
