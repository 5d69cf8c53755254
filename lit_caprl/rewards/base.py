"""What every reward returns, and the rule that reward models stay frozen."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class RewardOutput:
    """`rewards` [N] is what the policy is trained on; `terms` are named per-sample parts for
    logging; `details` holds one free-form dict per sample (e.g. the reader's answers)."""

    rewards: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    details: list[dict] = field(default_factory=list)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a reward model is a measuring instrument, never trained."""
    module.eval()
    module.requires_grad_(False)
    return module


class FrozenReward(nn.Module):
    """Base for rewards that hold models: `train()` never takes them out of eval mode.

    Subclasses implement `forward(captions, records, step) -> RewardOutput`."""

    def __init__(self) -> None:
        super().__init__()
        self.training = False

    def train(self, mode: bool = True) -> FrozenReward:
        super().train(False)
        return self
