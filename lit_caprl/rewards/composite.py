"""A weighted sum of named reward terms, each logged, with per-sample exclusion of failed terms."""

from __future__ import annotations

import torch
from torch import nn

from lit_caprl.data.schema import Record
from lit_caprl.rewards.base import FrozenReward, RewardOutput


def combine(values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum over terms [K, N] -> [N], and which (term, sample) entries were excluded.

    A non-finite entry is excluded for that sample; the remaining terms are rescaled by
    total weight / remaining weight, so one failed term neither zeroes nor shrinks the
    sample's reward relative to its group. A sample with no finite term gets the mean
    reward of the others (zero advantage under group normalisation)."""
    finite = torch.isfinite(values)
    w = weights[:, None] * finite
    kept = w.sum(0)
    scale = torch.where(kept != 0, weights.sum() / kept.where(kept != 0, torch.ones_like(kept)), 1.0)
    rewards = (values.nan_to_num(0.0, 0.0, 0.0) * w).sum(0) * scale
    none = ~finite.any(0)
    if none.any():
        rewards[none] = rewards[~none].mean() if (~none).any() else 0.0
    return rewards, ~finite


class CompositeReward(FrozenReward):
    """Args:
    terms: named reward modules (e.g. {"qa": CapRLQAReward, "length": LengthPenalty}).
    weights: per-term weight; missing names weigh 1.
    """

    name = "composite"

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        weights = weights or {}
        unknown = set(weights) - set(terms)
        if unknown:
            raise ValueError(f"weights name unknown terms {sorted(unknown)}; terms are {sorted(terms)}")
        self.terms = nn.ModuleDict(terms)
        self.register_buffer("weights", torch.tensor([float(weights.get(n, 1.0)) for n in terms]), persistent=False)

    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        outs = {name: term(captions, records, step=step) for name, term in self.terms.items()}
        values = torch.stack([o.rewards.float().cpu() for o in outs.values()])
        rewards, excluded = combine(values, self.weights.cpu())
        logged = {name: values[k] for k, name in enumerate(outs)}
        logged |= {f"excluded_{name}": excluded[k].float() for k, name in enumerate(outs)}
        details = [{name: o.details[i] for name, o in outs.items() if o.details} for i in range(len(captions))]
        return RewardOutput(rewards, logged, details)
