"""Supervised fine-tuning: completion-only cross-entropy for captioners and readers alike."""

from __future__ import annotations

import lightning as L
import torch

from lit_caprl.models.batches import Completions, PromptBatch
from lit_caprl.models.lora import LoRA
from lit_caprl.stages.optim import GuardedOptimization, Optim
from lit_caprl.stages.policy import PolicyStage


class SFTStage(PolicyStage, GuardedOptimization, L.LightningModule):
    """Trains `model` (a Hub id or export directory) to continue each prompt with its target.

    Only completion tokens (target + EOS) are scored: prompt and image tokens are context.

    Args:
        model: model to train, Hub id or `save_pretrained` directory.
        init_from: weights to start from (export dir or `.ckpt`); hyper-parameters come from this config.
        optim: optimizer settings (`Optim`); SFT's default decays the rate by cosine over the run.
        dtype: parameter dtype of the loaded model.
        lora: train LoRA adapters instead of all weights (`LoRA(quantize="nf4")` is QLoRA).
        gradient_checkpointing: recompute activations in backward to save memory.
    """

    def __init__(
        self,
        model: str,
        init_from: str | None = None,
        optim: Optim = Optim(lr=1e-3, warmup_steps=20, schedule="cosine"),
        lora: LoRA | None = None,
        gradient_checkpointing: bool = False,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.setup_policy(model, init_from, dtype, lora, gradient_checkpointing, optim)

    def encode(self, batch: dict) -> tuple[PromptBatch, Completions]:
        images = batch["image"]
        with_image = images[0] is not None
        texts = [
            self.adapter.chat(p, with_image, prefill)
            for p, prefill in zip(batch["prompt"], batch["prefill"], strict=True)
        ]
        prompts = self.adapter.encode_prompts(texts, images if with_image else None)
        return prompts.to(self.device), self.adapter.encode_completions(batch["target"]).to(self.device)

    def loss(self, batch: dict) -> torch.Tensor:
        prompts, targets = self.encode(batch)
        logps = self.adapter.completion_logprobs(prompts, targets)
        mask = targets.mask.float()
        return -(logps * mask).sum() / mask.sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch), prog_bar=True, batch_size=len(batch["target"]))

    def configure_optimizers(self) -> dict:
        return self.policy_optimizer(self.trainer.estimated_stepping_batches)
