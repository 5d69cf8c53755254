"""LoRA and QLoRA for the policy, through peft and bitsandbytes.

With LoRA the reference model of GRPO and DPO is the policy with its adapters disabled
(`reference_mode`), so no second copy of the weights is held.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from lit_caprl.models.adapter import VISION_MODULES


@dataclass
class LoRA:
    """LoRA settings for a policy (peft `LoraConfig` underneath).

    Args:
        r, alpha, dropout: rank, scaling numerator (scale = alpha / r) and dropout of the adapters.
        target_modules: module names to adapt, or "all-linear" (peft's shorthand).
        freeze_vision: leave the vision tower and projector without adapters (CapRL tunes the LLM).
        quantize: "nf4" loads the frozen base in bitsandbytes 4-bit (QLoRA); None keeps its dtype.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: "all-linear")
    freeze_vision: bool = True
    quantize: str | None = None


# Checkpoints carry the stage's hyper-parameters, this one included, and load with `weights_only`.
torch.serialization.add_safe_globals([LoRA])


def add_adapters(model: torch.nn.Module, lora: LoRA) -> PeftModel:
    """Wrap `model` in fresh LoRA adapters; only adapter weights are trainable afterwards."""
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        exclude_modules=VISION_MODULES if lora.freeze_vision else None,
    )
    return get_peft_model(model, config)


def reference_mode(model: torch.nn.Module):
    """Context in which `model` computes the reference: adapters off for a peft model."""
    return model.disable_adapter() if isinstance(model, PeftModel) else nullcontext()


def merged_copy(model: PeftModel) -> torch.nn.Module:
    """The policy with adapters merged into the base weights; the training model is untouched."""
    return copy.deepcopy(model).merge_and_unload()
