"""How every stage optimises its policy: the `Optim` settings, AdamW with linear warm-up then
constant or cosine decay, and the guard that skips non-finite steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.distributed.tensor import DTensor
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from lit_caprl.models.adapter import is_vision_parameter
from lit_caprl.models.sharding import all_ranks


@dataclass(frozen=True)
class Optim:
    """Optimizer settings, one object for SFT, GRPO and DPO (`model.init_args.optim.*` in a config).

    Args:
        lr: learning rate of the language model (and of everything, without `vision_lr`).
        vision_lr: learning rate of the vision tower and its projector (None: `lr`; 0 keeps them
            as they are); see `param_groups`.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear warm-up from 0, in optimizer steps.
        schedule: after warm-up, `constant`, or `cosine` decay to 0 at the run's last step.
        max_grad_norm: gradient-norm clip (0 disables).
        max_bad_steps: steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
        name: adamw, or adamw8bit (bitsandbytes, 8-bit optimizer states).
    """

    lr: float = 1e-5
    vision_lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = 1.0
    max_bad_steps: int = 10
    name: Literal["adamw", "adamw8bit"] = "adamw"


# Checkpoints carry the stage's hyper-parameters, this one included, and load with `weights_only`.
torch.serialization.add_safe_globals([Optim])


def param_groups(named_params, lr: float, vision_lr: float | None = None) -> list[dict]:
    """The trainable parameters as optimizer groups: the vision tower and its projector at
    `vision_lr` (None: `lr`), the rest at `lr`.

    A separate vision rate is common VLM practice (LLaVA's `mm_projector_lr`, Qwen-VL
    fine-tuning's `vision_lr`), and a random-init tower needs it: its patch embedding has
    thousands of inputs per output, so a full-rate Adam step moves every image feature far
    (on ShapesWorld the captioner then names colours and shapes at chance; RESULTS.md)."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    vision = [p for n, p in trainable if vision_lr is not None and is_vision_parameter(n)]
    rest = [p for n, p in trainable if vision_lr is None or not is_vision_parameter(n)]
    return [g for g in ({"params": rest, "lr": lr}, {"params": vision, "lr": vision_lr}) if g["params"]]


def adamw_schedule(named_params, optim: Optim, total_steps: int) -> dict:
    """Lightning's optimizer dict over the trainable parameters of `named_params` (see
    `param_groups`); the schedule steps per optimizer step and scales every group alike.
    `adamw` is PyTorch's fused AdamW (one kernel over all parameters, on the CPU as on GPUs;
    the per-tensor loop PyTorch picks by default on the CPU cost 12 ms of a 165 ms SFT step);
    `adamw8bit` is bitsandbytes' AdamW with 8-bit states (a quarter of AdamW's state memory)."""
    groups = param_groups(named_params, optim.lr, optim.vision_lr)
    if optim.name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=True)
    elif optim.name == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    else:
        raise ValueError(f"optim.name must be adamw or adamw8bit, got {optim.name!r}")
    warmup = optim.warmup_steps
    if optim.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, max(total_steps, warmup + 1))
    elif optim.schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    else:
        raise ValueError(f"optim.schedule must be cosine or constant, got {optim.schedule!r}")
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class NonFiniteGuard:
    """Skips optimizer steps whose loss or gradients are not finite, and stops a run that keeps
    producing them: one bad batch (a NaN reward, an overflow) costs one step, not the run."""

    def __init__(self, patience: int = 10) -> None:
        self.patience, self.in_a_row, self.skipped = patience, 0, 0

    def ok(self, loss: torch.Tensor | None, params) -> bool:
        """Whether the loss and every gradient are finite: one fused norm over this rank's
        gradients, not a check per tensor (a norm that overflows counts as non-finite too)."""
        finite = loss is None or bool(torch.isfinite(loss).all())
        grads = [_local(p.grad) for p in params if p.grad is not None]
        if finite and grads:
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True)))
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
    `optim.max_grad_norm` (unless the Trainer sets its own clip), and an optimizer step whose
    loss or gradient is not finite is skipped and counted (`train/skipped_steps`) by the
    stage's `nonfinite` guard."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.optim.max_grad_norm
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        loss = optimizer_closure()  # forward + backward; clipping runs inside optimizer.step below
        if self.nonfinite.ok(loss, self.parameters()):
            optimizer.step()
        else:
            optimizer.zero_grad()
        self.log("train/skipped_steps", float(self.nonfinite.skipped), on_step=True, on_epoch=False, batch_size=1)
