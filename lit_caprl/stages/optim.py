"""AdamW with linear warm-up, then constant or cosine decay: shared by every stage."""

from __future__ import annotations

from typing import Literal

import torch
from torch.distributed.tensor import DTensor
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from lit_caprl.models.adapter import is_vision_parameter
from lit_caprl.models.sharding import all_ranks


def param_groups(named_params, lr: float, vision_lr: float | None = None) -> list[dict]:
    """The trainable parameters as optimizer groups: the vision tower and its projector at
    `vision_lr` (None: `lr`), the rest at `lr`.

    A separate vision rate is common VLM practice (LLaVA's `mm_projector_lr`, Qwen-VL
    fine-tuning's `vision_lr`), and a random-init tower needs it: its patch embedding has
    thousands of inputs per output, so a full-rate Adam step moves every image feature far.
    On ShapesWorld at lr 3e-3, captions named colours and shapes at chance; with the tower at
    lr / 33, 0.93 and 0.85 of them were right (`experiments/shapes/captioner_pretrain.yaml`)."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    vision = [p for n, p in trainable if vision_lr is not None and is_vision_parameter(n)]
    rest = [p for n, p in trainable if vision_lr is None or not is_vision_parameter(n)]
    return [g for g in ({"params": rest, "lr": lr}, {"params": vision, "lr": vision_lr}) if g["params"]]


def adamw_schedule(
    named_params,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    schedule: Literal["cosine", "constant"] = "cosine",
    optimizer: Literal["adamw", "adamw8bit"] = "adamw",
    vision_lr: float | None = None,
) -> dict:
    """Lightning's optimizer dict over the trainable parameters of `named_params` (see
    `param_groups`); the schedule steps per optimizer step and scales every group alike.
    `adamw8bit` is bitsandbytes' AdamW with 8-bit states (a quarter of AdamW's state memory)."""
    groups = param_groups(named_params, lr, vision_lr)
    if optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be adamw or adamw8bit, got {optimizer!r}")
    if schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, warmup_steps + 1))
    elif schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup_steps)
    else:
        raise ValueError(f"schedule must be cosine or constant, got {schedule!r}")
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class NonFiniteGuard:
    """Skips optimizer steps whose loss or gradients are not finite, and stops a run that keeps
    producing them: one bad batch (a NaN reward, an overflow) costs one step, not the run."""

    def __init__(self, patience: int = 10) -> None:
        self.patience, self.in_a_row, self.skipped = patience, 0, 0

    def ok(self, loss: torch.Tensor | None, params) -> bool:
        finite = (loss is None or bool(torch.isfinite(loss).all())) and all(
            p.grad is None or bool(torch.isfinite(_local(p.grad)).all()) for p in params
        )
        if all_ranks(finite):  # one rank's NaN skips the step everywhere, or the ranks would diverge
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.patience:
            raise FloatingPointError(
                f"{self.in_a_row} optimizer steps in a row had a non-finite loss or gradient "
                f"({self.skipped} skipped in all); stopping. Lower the learning rate or check the data and rewards."
            )
        return False


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) gradient; the tensor itself otherwise."""
    return t.to_local() if isinstance(t, DTensor) else t


class GuardedOptimization:
    """LightningModule mixin for automatic optimization: gradients are clipped to
    `hparams.max_grad_norm` (unless the Trainer sets its own clip), and an optimizer step whose
    loss or gradient is not finite is skipped and counted (`train/skipped_steps`);
    `hparams.max_bad_steps` in a row stop the run."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.max_grad_norm
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        if not hasattr(self, "nonfinite"):
            self.nonfinite = NonFiniteGuard(self.hparams.get("max_bad_steps", 10))
        loss = optimizer_closure()  # forward + backward; clipping runs inside optimizer.step below
        if self.nonfinite.ok(loss, self.parameters()):
            optimizer.step()
        else:
            optimizer.zero_grad()
        self.log("train/skipped_steps", float(self.nonfinite.skipped), on_step=True, on_epoch=False, batch_size=1)
