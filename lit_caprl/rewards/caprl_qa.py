"""CapRL's reward: how well a frozen, vision-free reader answers the image's MCQs from the caption.

For each caption, `num_draws` questions are drawn with replacement from its image's pool,
each with its own shuffled option order and "cannot answer" appended last. The reward
is the mean score over draws (times `scale`). Draws are seeded by (seed, image id, step):
every caption of one image at one step faces the same questions, so a GRPO group is
compared on equal terms and a repeated call gives the same draws.

Two scoring modes; in both, the instructions and the caption, shared by a caption's
questions, are encoded once per caption:
- `sample`: CapRL's own. The reader generates up to `max_new_tokens` at `temperature`; the
  option its output picks scores 1 if correct, else 0.
- `logprob`: exact. The reader's distribution over the options (one forward pass) gives
  P(correct option) (`score="prob"`) or whether it ranks first (`score="argmax"`), averaged
  over every cyclic rotation of the options (`rotations=True`) to cancel the reader's bias
  toward particular positions. Being exact, it scores a caption repeated for one image (a
  GRPO group's identical samples) once.

The reader answers with a letter in CapRL's own prompt (`answer_format="caprl"`) or a terse
one (`"letter"`), or with the option's text (`"cloze"`, what small readers learn fast); see
`lit_caprl.mcq`. By default it is
asked in the format its export records, else in letters.
"""

from __future__ import annotations

import random
from typing import Literal

import torch

from lit_caprl import mcq
from lit_caprl.data.schema import LETTERS, MCQ, Record
from lit_caprl.models.loading import load_model
from lit_caprl.rewards.base import FrozenReward, RewardOutput, freeze


class CapRLQAReward(FrozenReward):
    """Args:
    reader: the reader LLM, Hub id or export directory (e.g. Qwen/Qwen2.5-3B-Instruct).
    num_draws: questions drawn per caption, with replacement (CapRL: 8).
    mode, score, rotations, answer_format: see the module docstring.
    temperature, max_new_tokens: reader sampling in `sample` mode (CapRL: 0.6, 10).
    scale: multiplies the mean score (CapRL's server used 2; advantage normalisation makes it moot).
    seed: base seed of the draws.
    batch_size: reader prompts per forward pass.
    """

    name = "caprl_qa"

    def __init__(
        self,
        reader: str,
        num_draws: int = 8,
        mode: Literal["logprob", "sample"] = "logprob",
        score: Literal["prob", "argmax"] = "prob",
        rotations: bool = True,
        answer_format: mcq.AnswerFormat | None = None,
        temperature: float = 0.6,
        max_new_tokens: int = 10,
        scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 256,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if mode not in ("logprob", "sample") or score not in ("prob", "argmax"):
            raise ValueError(f"mode must be logprob|sample and score prob|argmax, got {mode!r}, {score!r}")
        answer_format = mcq.resolve_format(reader, answer_format)
        self.adapter = load_model(reader, dtype)
        self.reader = freeze(self.adapter.model)
        self.num_draws, self.mode, self.score, self.rotations = num_draws, mode, score, rotations
        self.answer_format = answer_format
        self.temperature, self.max_new_tokens, self.scale = temperature, max_new_tokens, scale
        self.seed, self.batch_size = seed, batch_size
        if answer_format in mcq.LETTER_FORMATS:  # fail at construction, not at the first reward call
            mcq.option_letter_ids(self.adapter.tokenizer, reader, answer_format=answer_format)

    def draws(self, record: Record, step: int) -> list[tuple[MCQ, list[int]]]:
        """The (question, option order) pairs every caption of `record` is asked at `step`."""
        rng = random.Random(f"{self.seed}-{record.id}-{step}")
        out = []
        for _ in range(self.num_draws):
            q = rng.choice(record.questions)
            out.append((q, rng.sample(range(len(q.options)), len(q.options))))
        return out

    @torch.no_grad()
    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        if self.mode == "sample":  # every repeat is a fresh sample
            return self._reward(captions, records, step)
        # Exact scores: a caption repeated for the same record (a GRPO group's identical samples)
        # is scored once. Records are keyed by identity: the rollout repeats each one G times.
        keys = [(c, id(r)) for c, r in zip(captions, records, strict=True)]
        slot: dict[tuple[str, int], int] = {}
        first = []  # the first sample of each distinct key
        for i, key in enumerate(keys):
            if key not in slot:
                slot[key] = len(first)
                first.append(i)
        if len(first) == len(keys):
            return self._reward(captions, records, step)
        out = self._reward([captions[i] for i in first], [records[i] for i in first], step)
        rows = torch.tensor([slot[key] for key in keys])
        terms = {name: t[rows] for name, t in out.terms.items()}
        return RewardOutput(out.rewards[rows], terms, [out.details[i] for i in rows.tolist()])

    def _reward(self, captions: list[str], records: list[Record], step: int) -> RewardOutput:
        # One reader prompt per (caption, draw, rotation); `owner` maps prompts back to captions.
        texts, shown, correct, owner, asked = [], [], [], [], []
        for i, (cap, rec) in enumerate(zip(captions, records, strict=True)):
            for q, order in self.draws(rec, step):
                orders = mcq.cyclic_orders(order) if (self.rotations and self.mode == "logprob") else [order]
                for rotated in orders:
                    options = [q.options[j] for j in rotated]
                    text, options_shown = mcq.reader_prompt(self.adapter, cap, q.question, options, self.answer_format)
                    texts.append(text)
                    shown.append(options_shown)
                    correct.append(rotated.index(LETTERS.index(q.answer)))
                    owner.append(i)
                    asked.append(q.question)
        group = len(texts) // len(captions)  # a caption's prompts, which share its instructions and caption
        scores = (
            self._score_logprob(texts, shown, correct, group)
            if self.mode == "logprob"
            else self._score_sample(texts, shown, correct, group)
        )
        owner_t = torch.tensor(owner)
        sums = torch.zeros(len(captions)).index_add_(0, owner_t, scores)
        counts = torch.zeros(len(captions)).index_add_(0, owner_t, torch.ones_like(scores))
        rewards = self.scale * sums / counts
        details = [{"questions": [], "scores": []} for _ in captions]
        for i, q, score in zip(owner, asked, scores.tolist(), strict=True):
            details[i]["questions"].append(q)
            details[i]["scores"].append(score)
        return RewardOutput(rewards, {self.name: rewards}, details)

    def _score_logprob(self, texts: list[str], shown: list[list[str]], correct: list[int], group: int) -> torch.Tensor:
        logits = mcq.option_logits(self.adapter, texts, shown, self.answer_format, self.batch_size, group=group)
        target = torch.tensor(correct)
        if self.score == "prob":
            return logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
        return (logits.argmax(-1) == target).float()

    def _score_sample(self, texts: list[str], shown: list[list[str]], correct: list[int], group: int) -> torch.Tensor:
        answers = mcq.sample_answers(self.adapter, texts, self.max_new_tokens, self.temperature, self.batch_size, group)
        picks = [mcq.sampled_choice(a, s, self.answer_format) for a, s in zip(answers, shown, strict=True)]
        return torch.tensor([float(p == c) for p, c in zip(picks, correct, strict=True)])
