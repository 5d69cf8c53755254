"""Similarity to the record's reference captions (BLEU, ROUGE-L or chrF), via torchmetrics."""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics.functional.text import bleu_score, chrf_score, rouge_score

from lit_caprl.data.schema import Record
from lit_caprl.rewards.base import FrozenReward, RewardOutput


class ReferenceMetric(FrozenReward):
    """Per-caption BLEU-4 (smoothed), ROUGE-L F1 or chrF against `record.captions`.

    A caption of a record without references scores NaN, which `CompositeReward` excludes
    and counts; used alone, such a record is an error."""

    def __init__(self, metric: Literal["bleu", "rouge_l", "chrf"] = "rouge_l") -> None:
        super().__init__()
        if metric not in ("bleu", "rouge_l", "chrf"):
            raise ValueError(f"metric must be bleu | rouge_l | chrf, got {metric!r}")
        self.metric = metric
        self.name = metric

    def _score(self, caption: str, refs: list[str]) -> float:
        if self.metric == "bleu":
            return float(bleu_score([caption], [refs], n_gram=4, smooth=True))
        if self.metric == "chrf":
            return float(chrf_score([caption], [refs]))
        return float(rouge_score(caption, refs, rouge_keys="rougeL")["rougeL_fmeasure"])

    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        scores = [
            self._score(c, list(r.captions)) if r.captions else float("nan")
            for c, r in zip(captions, records, strict=True)
        ]
        rewards = torch.tensor(scores)
        return RewardOutput(rewards, {self.name: rewards})
