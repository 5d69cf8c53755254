"""AdamW with linear warm-up then cosine decay, shared by every stage."""

from __future__ import annotations

import torch
from transformers import get_cosine_schedule_with_warmup


def adamw_cosine(params, lr: float, weight_decay: float, warmup_steps: int, total_steps: int) -> dict:
    """Lightning's optimizer dict; the schedule steps once per optimizer step."""
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, warmup_steps + 1))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
