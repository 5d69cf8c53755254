"""Similarity to the record's reference captions (BLEU, ROUGE-L or chrF), via torchmetrics."""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics.functional.text import bleu_score, chrf_score, rouge_score

from lit_caprl.data.schema import Record
from lit_caprl.rewards.base import FrozenReward, RewardOutput


class ReferenceMetric(FrozenReward):
    """Per-caption BLEU-4 (smoothed), ROUGE-L F1 or chrF against the record's references.

    `references`: "captions" (`record.captions`), or the name of a caption list in
    `record.meta` (ShapesWorld's "short_captions": references as partial as human ones, where
    a dense caption cannot score well). A caption of a record without references scores NaN,
    which `CompositeReward` excludes and counts; used alone, such a record is an error."""

    def __init__(self, metric: Literal["bleu", "rouge_l", "chrf"] = "rouge_l", references: str = "captions") -> None:
        super().__init__()
        if metric not in ("bleu", "rouge_l", "chrf"):
            raise ValueError(f"metric must be bleu | rouge_l | chrf, got {metric!r}")
        self.metric, self.references = metric, references
        self.name = metric

    def _score(self, caption: str, refs: list[str]) -> float:
        if self.metric == "bleu":
            return float(bleu_score([caption], [refs], n_gram=4, smooth=True))
        if self.metric == "chrf":
            return float(chrf_score([caption], [refs]))
        return float(rouge_score(caption, refs, rouge_keys="rougeL")["rougeL_fmeasure"])

    def refs(self, record: Record) -> list[str]:
        if self.references == "captions":
            return list(record.captions)
        return list(record.meta.get(self.references, []))

    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        refs = [self.refs(r) for r in records]
        scores = [self._score(c, ref) if ref else float("nan") for c, ref in zip(captions, refs, strict=True)]
        rewards = torch.tensor(scores)
        return RewardOutput(rewards, {self.name: rewards})
