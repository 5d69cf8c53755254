"""DPO on image-conditioned preference pairs (image, prompt, chosen caption, rejected caption).

The reference is a frozen copy of the starting policy. With `precompute_ref_logps` its
log-probs for every training pair are computed once before training and the copy is then
dropped, which frees its memory and a forward pass per step. The math is in `losses.py`.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.batches import Completions, PromptBatch
from lit_caprl.models.lora import LoRA, reference_mode
from lit_caprl.stages import losses
from lit_caprl.stages.optim import GuardedOptimization, Optim
from lit_caprl.stages.policy import PolicyStage


class DPOStage(PolicyStage, GuardedOptimization, L.LightningModule):
    """Direct preference optimisation of a captioner.

    Args:
        model, init_from, dtype: the policy and the weights it starts from (see `SFTStage`).
        beta: strength of the implicit KL to the reference (DPO's beta).
        loss_type: sigmoid (DPO) | ipo | hinge; IPO scores the per-token mean log-prob, the others the sum.
        label_smoothing: assumed label-noise rate for `sigmoid` (conservative DPO).
        precompute_ref_logps: score all training pairs with the reference once, then drop the reference.
        rpo_alpha: weight of an NLL term on the chosen captions (RPO, TRL's `rpo_alpha`): keeps the
            policy writing what was preferred, instead of only moving away from what was not.
        optim: optimizer settings (`Optim`).
        lora, gradient_checkpointing: LoRA/QLoRA and memory options (see `SFTStage`); with LoRA the
            reference is the policy with its adapters disabled.
    """

    def __init__(
        self,
        model: str,
        init_from: str | None = None,
        beta: float = 0.1,
        loss_type: losses.DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        precompute_ref_logps: bool = False,
        rpo_alpha: float = 0.0,
        optim: Optim = Optim(),
        lora: LoRA | None = None,
        gradient_checkpointing: bool = False,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints leave out the frozen reference
        self.setup_policy(model, init_from, dtype, lora, gradient_checkpointing, optim, reference=True)
        self.ref_cache: dict[str, tuple[float, float]] = {}
        self.use_ref_cache = False

    def encode(self, batch: dict) -> tuple[PromptBatch, Completions]:
        """Each pair's prompt once per pair, repeated for its two rows (chosen, rejected, next
        pair's chosen, ...), and the captions in that order. Policy and reference share them."""
        n = len(batch["chosen"])
        texts = [self.adapter.chat(p, with_image=True) for p in batch["prompt"]]
        prompts = self.adapter.encode_prompts(texts, batch["image"]).to(self.device)
        prompts = prompts.select(torch.arange(n, device=self.device).repeat_interleave(2))
        pairs = [text for pair in zip(batch["chosen"], batch["rejected"], strict=True) for text in pair]
        return prompts, self.adapter.encode_completions(pairs).to(self.device)

    def sequence_logps(
        self, adapter: VLMAdapter, batch: dict, encoded: tuple[PromptBatch, Completions] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs of the chosen and of the rejected captions, [P] each, in one forward pass in
        which each pair's prompt and image are encoded once (`group=2`; per row under activation
        checkpointing, which drops the shared cache), and the chosen captions' token counts."""
        prompts, comps = encoded or self.encode(batch)
        checkpointing = adapter.base.is_activation_checkpointing and torch.is_grad_enabled()
        logp = adapter.completion_logprobs(prompts, comps, group=1 if checkpointing else 2)
        mask = comps.mask.to(logp.dtype)
        seq, tokens = (logp * mask).sum(-1), mask.sum(-1).clamp(min=1)
        if self.hparams.loss_type == "ipo":
            seq = seq / tokens
        return seq[0::2], seq[1::2], tokens[0::2]

    def reference_logps(
        self, batch: dict, encoded: tuple[PromptBatch, Completions] | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.use_ref_cache:
            cached = torch.tensor([self.ref_cache[i] for i in batch["id"]], device=self.device)
            return cached[:, 0], cached[:, 1]
        with torch.no_grad(), reference_mode(self.policy):
            return self.sequence_logps(self.ref_adapter or self.adapter, batch, encoded)[:2]

    def on_fit_start(self) -> None:
        """With `precompute_ref_logps`, score every training and validation pair once."""
        if not self.hparams.precompute_ref_logps or self.use_ref_cache:
            return
        dm = self.trainer.datamodule
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for batch in loader:
                chosen, rejected = self.reference_logps(batch)
                self.ref_cache.update(
                    zip(batch["id"], zip(chosen.tolist(), rejected.tolist(), strict=True), strict=True)
                )
        self.use_ref_cache = True  # training and validation now need only the cache
        self.ref = self.ref_adapter = None

    def step(self, batch: dict, prefix: str) -> Tensor:
        hp = self.hparams
        encoded = self.encode(batch)
        chosen, rejected, chosen_tokens = self.sequence_logps(self.adapter, batch, encoded)
        ref_chosen, ref_rejected = self.reference_logps(batch, encoded)
        loss, r_chosen, r_rejected = losses.dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, hp.beta, hp.loss_type, hp.label_smoothing
        )
        loss = loss.mean()
        n = len(batch["chosen"])
        if hp.rpo_alpha:
            nll = losses.token_mean_nll(chosen * (chosen_tokens if hp.loss_type == "ipo" else 1), chosen_tokens)
            loss = loss + hp.rpo_alpha * nll
            self.log(f"{prefix}/nll", nll, batch_size=n)
        self.log(f"{prefix}/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{prefix}/rewards/chosen", r_chosen.mean(), batch_size=n)
        self.log(f"{prefix}/rewards/rejected", r_rejected.mean(), batch_size=n)
        self.log(f"{prefix}/rewards/accuracy", (r_chosen > r_rejected).float().mean(), prog_bar=True, batch_size=n)
        self.log(f"{prefix}/rewards/margin", (r_chosen - r_rejected).mean(), batch_size=n)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.step(batch, "val")

    def configure_optimizers(self) -> dict:
        return self.policy_optimizer(self.trainer.estimated_stepping_batches)
