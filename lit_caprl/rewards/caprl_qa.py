"""CapRL's reward: how well a frozen, vision-free reader answers the image's MCQs from the caption.

For each caption, `num_draws` questions are drawn with replacement from its image's pool,
each with its own shuffled option order and "cannot answer" appended last. The reward
is the mean score over draws (times `scale`). Draws are seeded by (seed, image id, step):
every caption of one image at one step faces the same questions, so a GRPO group is
compared on equal terms and a repeated call gives the same draws.

Two scoring modes:
- `sample`: CapRL's own. The reader generates up to `max_new_tokens` at `temperature`; the
  first option letter in its output scores 1 if correct, else 0.
- `logprob`: exact. One forward pass gives the reader's distribution over the option
  letters at the answer position; the score is P(correct letter) (`score="prob"`) or
  whether it ranks first (`score="argmax"`), averaged over every cyclic rotation of the
  options (`rotations=True`) to cancel the reader's bias toward particular letters.
"""

from __future__ import annotations

import random
import re
from typing import Literal

import torch
from torch import Tensor

from lit_caprl.data import prompts
from lit_caprl.data.schema import LETTERS, MCQ, Record
from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.loading import load_model
from lit_caprl.rewards.base import FrozenReward, RewardOutput, freeze


class CapRLQAReward(FrozenReward):
    """Args:
    reader: the reader LLM, Hub id or export directory (e.g. Qwen/Qwen2.5-3B-Instruct).
    num_draws: questions drawn per caption, with replacement (CapRL: 8).
    mode, score, rotations: see the module docstring.
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
        self.adapter = load_model(reader, dtype)
        self.reader = freeze(self.adapter.model)
        self.num_draws, self.mode, self.score, self.rotations = num_draws, mode, score, rotations
        self.temperature, self.max_new_tokens, self.scale = temperature, max_new_tokens, scale
        self.seed, self.batch_size = seed, batch_size
        self.letter_ids = option_letter_ids(self.adapter.tokenizer, reader)

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
        # One reader prompt per (caption, draw, rotation); `owner` maps prompts back to captions.
        texts, correct, n_shown, owner, asked = [], [], [], [], []
        for i, (cap, rec) in enumerate(zip(captions, records, strict=True)):
            for q, order in self.draws(rec, step):
                rots = range(len(order)) if (self.rotations and self.mode == "logprob") else range(1)
                for r in rots:
                    shown = order[r:] + order[:r]
                    options = [q.options[j] for j in shown]
                    texts.append(
                        self.adapter.chat(
                            prompts.reader_question(cap, q.question, options), False, prompts.ANSWER_PREFIX
                        )
                    )
                    correct.append(shown.index(LETTERS.index(q.answer)))
                    n_shown.append(len(options) + 1)
                    owner.append(i)
                    asked.append(q.question)
        scores = (
            self._score_logprob(texts, correct, n_shown)
            if self.mode == "logprob"
            else self._score_sample(texts, correct, n_shown)
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

    def _batches(self, texts: list[str]):
        yield from _prompt_batches(self.adapter, texts, self.batch_size)

    def _score_logprob(self, texts: list[str], correct: list[int], n_shown: list[int]) -> torch.Tensor:
        logits = letter_logits(self.adapter, self.letter_ids, texts, n_shown, self.batch_size)
        target = torch.tensor(correct)
        if self.score == "prob":
            return logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
        return (logits.argmax(-1) == target).float()

    def _score_sample(self, texts: list[str], correct: list[int], n_shown: list[int]) -> torch.Tensor:
        out = torch.empty(len(texts))
        for s, batch in self._batches(texts):
            comps = self.adapter.generate(batch, self.max_new_tokens, temperature=self.temperature)
            for j, answer in enumerate(self.adapter.decode(comps)):
                letter = first_letter(answer, n_shown[s + j])
                out[s + j] = float(letter is not None and LETTERS.index(letter) == correct[s + j])
        return out


def option_letter_ids(tokenizer, reader: str, n: int = 8) -> list[int]:
    """Token ids of the option letters A.. as the reader would write them after the answer prefix;
    an error names the reader if a letter is not exactly one known token."""
    prefix = tokenizer(prompts.ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in LETTERS[:n]:
        pieces = tokenizer(f"{prompts.ANSWER_PREFIX} {letter}", add_special_tokens=False)["input_ids"]
        if pieces[: len(prefix)] != prefix or len(pieces) != len(prefix) + 1 or pieces[-1] == tokenizer.unk_token_id:
            raise ValueError(
                f"reader {reader!r}: option letter {letter!r} is not a single token after "
                f"{prompts.ANSWER_PREFIX!r}; the logprob mode needs one token per letter"
            )
        ids.append(pieces[-1])
    return ids


def _prompt_batches(adapter: VLMAdapter, texts: list[str], batch_size: int, images: list | None = None):
    for s in range(0, len(texts), batch_size):
        chunk = None if images is None else images[s : s + batch_size]
        yield s, adapter.encode_prompts(texts[s : s + batch_size], chunk).to(adapter.model.device)


@torch.no_grad()
def letter_logits(
    adapter: VLMAdapter,
    letter_ids: list[int],
    texts: list[str],
    n_shown: list[int],
    batch_size: int,
    images: list | None = None,
) -> Tensor:
    """The model's logits over the option letters at the answer position, [N, max options];
    letters beyond a prompt's own options are -inf. `images` (one per prompt) for a VLM."""
    n = max(n_shown)
    out = torch.empty(len(texts), n)
    for s, batch in _prompt_batches(adapter, texts, batch_size, images):
        out[s : s + len(batch)] = adapter.next_token_logits(batch)[:, letter_ids[:n]].cpu()
    valid = torch.arange(n)[None] < torch.tensor(n_shown)[:, None]
    return out.masked_fill(~valid, float("-inf"))


def first_letter(text: str, n_options: int) -> str | None:
    """The first standalone option letter in a reader's answer, as CapRL parses it."""
    m = re.search(rf"\b([{LETTERS[:n_options]}])\b", text)
    return m[1] if m else None
