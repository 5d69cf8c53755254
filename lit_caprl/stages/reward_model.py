"""A caption reward model: a text-only sequence classifier trained on preference pairs with
the Bradley-Terry loss (InstructGPT's reward model, TRL's `RewardTrainer`). It reads only the
caption, so as a GRPO reward (`ClassifierReward`) it is a judge without eyes: the kind of
learned reward CapRL's QA reward is compared with (`experiments/shapes/comparisons.yaml`)."""

from __future__ import annotations

import lightning as L
import torch
from transformers import AutoModelForSequenceClassification

from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.loading import load_tokenizer, resolve
from lit_caprl.stages import losses
from lit_caprl.stages.optim import GuardedOptimization, NonFiniteGuard, Optim, adamw_schedule


class RewardModelStage(GuardedOptimization, L.LightningModule):
    """Trains a one-logit classifier so that r(chosen) > r(rejected) on `{"chosen", "rejected"}`
    caption pairs; logs the loss and the pairwise accuracy (`val/accuracy`).

    Args:
        model: a text model (Hub id or export directory); its LM head is replaced by a fresh
            one-logit score head (`AutoModelForSequenceClassification`).
        init_from: a reward model export to continue from (weights only).
        optim: optimizer settings (`Optim`).
        max_length: captions are truncated to this many tokens.
    """

    def __init__(
        self,
        model: str,
        init_from: str | None = None,
        optim: Optim = Optim(lr=1e-3, warmup_steps=20, schedule="cosine"),
        max_length: int = 128,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        source = resolve(init_from or model)
        tokenizer = load_tokenizer(source)
        if tokenizer.pad_token is None:
            raise ValueError(f"{source}: the tokenizer has no pad token; batched scoring needs one")
        self.model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).train()
        self.model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last real token
        self.adapter = VLMAdapter(self.model, tokenizer)  # what `HFExport` writes
        self.optim, self.nonfinite = optim, NonFiniteGuard(optim.max_bad_steps)

    def scores(self, captions: list[str]) -> torch.Tensor:
        batch = self.adapter.tokenizer(
            captions, padding=True, truncation=True, max_length=self.hparams.max_length, return_tensors="pt"
        ).to(self.device)
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        chosen, rejected = self.scores(batch["chosen"]), self.scores(batch["rejected"])
        loss = losses.bradley_terry_loss(chosen, rejected)
        n = len(batch["chosen"])
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{split}/accuracy", (chosen > rejected).float().mean(), prog_bar=split == "val", batch_size=n)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict:
        return adamw_schedule(self.model.named_parameters(), self.optim, self.trainer.estimated_stepping_batches)
