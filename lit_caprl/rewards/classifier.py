"""Rewards from sequence-classification models: a scalar reward model, and NLI fidelity.

Both load through `AutoModelForSequenceClassification.from_pretrained`, so a tiny local
model and a Hub model (an IXC-2.5-Reward-style scorer, `microsoft/deberta-large-mnli`)
take the same path. Both are frozen: eval mode, no gradients, never in an optimizer.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

from lit_caprl.data.schema import Record
from lit_caprl.models.loading import load_tokenizer, resolve
from lit_caprl.rewards.base import FrozenReward, RewardOutput, freeze


class _Classifier(FrozenReward):
    def __init__(self, model: str, batch_size: int, dtype: str, trust_remote_code: bool) -> None:
        super().__init__()
        source = resolve(model)
        self.model = freeze(
            AutoModelForSequenceClassification.from_pretrained(
                source, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
        )
        self.tokenizer = load_tokenizer(source, trust_remote_code)
        if self.tokenizer.pad_token is None:
            raise ValueError(f"{model}: the tokenizer has no pad token; batched scoring needs one")
        self.batch_size = batch_size

    @torch.no_grad()
    def logits(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        """[N, num_labels] logits of `texts` (or of (texts, pairs) sentence pairs)."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            second = pairs[s : s + self.batch_size] if pairs is not None else None
            enc = self.tokenizer(texts[s : s + self.batch_size], second, padding=True, return_tensors="pt")
            out.append(self.model(**enc.to(self.model.device)).logits.float().cpu())
        return torch.cat(out)


class ClassifierReward(_Classifier):
    """A reward model with one output logit (TRL's reward models, IXC-2.5-Reward): the logit is the reward.

    Args:
        model: `AutoModelForSequenceClassification` export or Hub id with `num_labels == 1`.
        template: how the caption is shown to the model; `{caption}` is replaced.
    """

    name = "classifier"

    def __init__(
        self,
        model: str,
        template: str = "{caption}",
        batch_size: int = 64,
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(model, batch_size, dtype, trust_remote_code)
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{model}: a reward model has one output logit, this one has {self.model.config.num_labels}"
            )
        self.template = template

    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        rewards = self.logits([self.template.format(caption=c) for c in captions])[:, 0]
        return RewardOutput(rewards, {self.name: rewards})


class NLIFidelity(_Classifier):
    """MOCHa's fidelity term: 1 - P(contradiction) of the caption (hypothesis) given each
    reference caption (premise), averaged over the references. A record without references
    scores NaN (excluded and counted by `CompositeReward`).

    Args:
        model: an NLI `AutoModelForSequenceClassification` whose `config.label2id` names a
            `contradiction` label (any case).
    """

    name = "nli_fidelity"

    def __init__(self, model: str, batch_size: int = 64, dtype: str = "float32", trust_remote_code: bool = False):
        super().__init__(model, batch_size, dtype, trust_remote_code)
        labels = {k.lower(): v for k, v in self.model.config.label2id.items()}
        if "contradiction" not in labels:
            raise ValueError(f"{model}: config.label2id {self.model.config.label2id} has no 'contradiction' label")
        self.contradiction = labels["contradiction"]

    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        premises, hypotheses, owner = [], [], []
        for i, (cap, rec) in enumerate(zip(captions, records, strict=True)):
            for ref in rec.captions:
                premises.append(ref)
                hypotheses.append(cap)
                owner.append(i)
        rewards = torch.full((len(captions),), float("nan"))
        if premises:
            p_contra = self.logits(premises, hypotheses).softmax(-1)[:, self.contradiction]
            idx = torch.tensor(owner)
            sums = torch.zeros(len(captions)).index_add_(0, idx, 1 - p_contra)
            counts = torch.zeros(len(captions)).index_add_(0, idx, torch.ones_like(p_contra))
            has = counts > 0
            rewards[has] = sums[has] / counts[has]
        return RewardOutput(rewards, {self.name: rewards})
