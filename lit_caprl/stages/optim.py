"""AdamW with linear warm-up, then constant or cosine decay: shared by every stage."""

from __future__ import annotations

from typing import Literal

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup


def adamw_schedule(
    params,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    schedule: Literal["cosine", "constant"] = "cosine",
) -> dict:
    """Lightning's optimizer dict over the trainable `params`; the schedule steps per optimizer step."""
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, warmup_steps + 1))
    elif schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup_steps)
    else:
        raise ValueError(f"schedule must be cosine or constant, got {schedule!r}")
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
