"""A CLIP dual encoder trained on images and their captions (CLIP's own symmetric InfoNCE
loss), for the image-caption similarity reward `ClipSimilarity`: the CLIP-style reward CapRL's
QA reward is compared with (`experiments/shapes/comparisons.yaml`)."""

from __future__ import annotations

import lightning as L
import torch
from transformers import AutoProcessor, CLIPModel

from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.loading import resolve
from lit_caprl.stages.optim import GuardedOptimization, NonFiniteGuard, Optim, adamw_schedule


class ClipStage(GuardedOptimization, L.LightningModule):
    """Contrastive image-caption training; logs the loss and `val/accuracy`, the share of images
    whose own caption scores highest among the captions of their batch.

    Args:
        model: a `CLIPModel` (Hub id or export directory, e.g. `make-tiny --family clip`).
        init_from: a CLIP export to continue from (weights only).
        optim: optimizer settings (`Optim`).
    """

    def __init__(
        self,
        model: str,
        init_from: str | None = None,
        optim: Optim = Optim(lr=1e-3, warmup_steps=50, schedule="cosine"),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        source = resolve(init_from or model)
        self.model = CLIPModel.from_pretrained(source).train()
        self.processor = AutoProcessor.from_pretrained(source)
        self.processor.tokenizer.padding_side = "right"  # see ClipSimilarity
        self.adapter = VLMAdapter(self.model, self.processor)  # what `HFExport` writes
        self.optim, self.nonfinite = optim, NonFiniteGuard(optim.max_bad_steps)

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        inputs = self.processor(text=batch["caption"], images=batch["image"], padding=True, return_tensors="pt")
        out = self.model(**inputs.to(self.device), return_loss=True)
        n = len(batch["caption"])
        labels = torch.arange(n, device=self.device)
        self.log(f"{split}/loss", out.loss, prog_bar=True, batch_size=n)
        accuracy = (out.logits_per_image.argmax(-1) == labels).float().mean()
        self.log(f"{split}/accuracy", accuracy, prog_bar=split == "val", batch_size=n)
        return out.loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict:
        return adamw_schedule(self.model.named_parameters(), self.optim, self.trainer.estimated_stepping_batches)
