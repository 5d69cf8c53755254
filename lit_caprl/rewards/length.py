"""CapRL++'s length penalty: full reward up to `l1` words, falling linearly to 0 at `l2`."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_caprl.data.schema import Record
from lit_caprl.rewards.base import FrozenReward, RewardOutput


def length_penalty(lengths: Tensor, l1: int, l2: int) -> Tensor:
    """1 for length <= l1, linear to 0 at l2, 0 beyond (a multiplier or an additive term)."""
    if not 0 <= l1 < l2:
        raise ValueError(f"need 0 <= l1 < l2, got l1={l1}, l2={l2}")
    return ((l2 - lengths.float()) / (l2 - l1)).clamp(0.0, 1.0)


class LengthPenalty(FrozenReward):
    """Discourages padding a caption to game a QA reward: longer than `l1` words costs reward.

    Args:
        l1, l2: lengths in whitespace words (the tiny tokenizer's tokens are words; for a BPE
            policy choose l1/l2 in words, about 0.75 of the token budget).
    """

    name = "length"

    def __init__(self, l1: int = 48, l2: int = 64) -> None:
        super().__init__()
        length_penalty(torch.zeros(1), l1, l2)  # validate now, not at the first rollout
        self.l1, self.l2 = l1, l2

    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        lengths = torch.tensor([len(c.split()) for c in captions])
        rewards = length_penalty(lengths, self.l1, self.l2)
        return RewardOutput(rewards, {self.name: rewards}, [{"words": int(n)} for n in lengths])
