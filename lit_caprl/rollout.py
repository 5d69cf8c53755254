"""Rollouts, outside Lightning: image -> prompt -> G sampled captions -> rewards -> advantages.

`collect` is the whole data path of a GRPO step before the loss: it samples G captions per
image (`sample`), scores them with the frozen reward, optionally drops groups that carry no
gradient and refills the batch with fresh prompts (DAPO's dynamic sampling), and computes the
group-relative advantages. Pair mining calls `sample` alone, so both see the same captions
and rewards. `RolloutCallback` runs `collect` before every GRPO training step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from lit_caprl.data.schema import Record
from lit_caprl.engines import HFEngine, Request, RolloutEngine
from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.batches import Completions, PromptBatch
from lit_caprl.models.sharding import all_ranks

ScaleRewards = Literal["group", "batch", "none"]


def group_advantages(
    rewards: Tensor, scale: ScaleRewards = "group", estimator: Literal["grpo", "rloo"] = "grpo", eps: float = 1e-4
) -> Tensor:
    """Advantage of each completion against the others of its prompt, shape [B, G].

    grpo: r - mean(group), divided by the group std ("group"), the whole batch's std ("batch",
    as Dr. GRPO / TRL's scale_rewards="batch") or not at all ("none").
    rloo: r - mean(the other G-1 rewards of the group) (leave-one-out baseline), then scaled alike.
    A group whose rewards are all equal gets zero advantage, never NaN.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, G>=2], got {tuple(rewards.shape)}")
    g = rewards.shape[1]
    mean = rewards.mean(dim=1, keepdim=True)
    centred = rewards - mean
    if estimator == "rloo":
        centred = centred * g / (g - 1)  # r - (sum - r)/(G-1) == (r - mean) * G/(G-1)
    if scale == "group":
        return centred / (rewards.std(dim=1, keepdim=True) + eps)
    if scale == "batch":
        return centred / (rewards.std() + eps)
    return centred


@dataclass(frozen=True)
class RolloutConfig:
    """How a rollout is drawn and turned into advantages (the GRPO stage's arguments of the same names)."""

    num_generations: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    scale_rewards: ScaleRewards = "group"
    advantage: str = "grpo"
    seed: int = 0


@dataclass
class Rollout:
    """N = len(records) * G sequences, grouped consecutively: rows i*G .. i*G+G-1 belong to records[i]."""

    records: list[Record]
    prompts: PromptBatch  # [N], each record's prompt repeated G times
    completions: Completions  # [N]
    texts: list[str]  # [N] decoded captions
    rewards: Tensor  # [N] what the policy is trained on
    terms: dict[str, Tensor]  # named reward parts, [N] each
    advantages: Tensor | None = None  # [N], set by `collect`
    dropped_groups: int = 0  # groups without reward spread that dynamic sampling dropped
    refill_rounds: int = 0

    @property
    def group_size(self) -> int:
        return len(self.texts) // len(self.records)

    @property
    def group_rewards(self) -> Tensor:
        """Rewards as [records, G]."""
        return self.rewards.view(len(self.records), -1)

    def select_groups(self, groups: Tensor) -> Rollout:
        """The rollout restricted to whole groups `groups` (indices into `records`)."""
        g = self.group_size
        rows = (groups[:, None] * g + torch.arange(g)).flatten()
        return replace(
            self,
            records=[self.records[i] for i in groups.tolist()],
            prompts=self.prompts.select(rows.to(self.prompts.input_ids.device)),
            completions=self.completions.select(rows),
            texts=[self.texts[i] for i in rows.tolist()],
            rewards=self.rewards[rows],
            terms={k: v[rows] for k, v in self.terms.items()},
            advantages=None if self.advantages is None else self.advantages[rows],
        )

    @staticmethod
    def concat(parts: list[Rollout], pad_id: int) -> Rollout:
        return Rollout(
            records=[r for p in parts for r in p.records],
            prompts=PromptBatch.concat([p.prompts for p in parts], pad_id),
            completions=Completions.concat([p.completions for p in parts], pad_id),
            texts=[t for p in parts for t in p.texts],
            rewards=torch.cat([p.rewards for p in parts]),
            terms={k: torch.cat([p.terms[k] for p in parts]) for k in parts[0].terms},
        )


def stream_seed(*parts: object) -> int:
    """A seed that is a pure function of `parts` (e.g. run seed, rank, rollout step): every rank
    samples independently, and a resumed run redraws exactly what the original run drew."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@torch.no_grad()
def sample(
    adapter: VLMAdapter,
    reward: torch.nn.Module,
    images: list,
    prompts: list[str],
    records: list[Record],
    config: RolloutConfig,
    step: int = 0,
    device: torch.device | str = "cpu",
    engine: RolloutEngine | None = None,
) -> Rollout:
    """G sampled captions per image, scored by `reward` (no advantages yet)."""
    g = config.num_generations
    engine = engine or HFEngine()
    engine.sync(adapter)  # sample from the policy's current weights
    texts = [adapter.chat(p, with_image=True) for p in prompts]
    batch = adapter.encode_prompts(texts, images).to(device)
    batch = batch.select(torch.arange(len(images), device=device).repeat_interleave(g))
    was_training = adapter.model.training
    adapter.model.eval()
    request = Request(texts, images, batch, g, config.max_new_tokens, config.temperature, config.top_p)
    completions = engine.generate(adapter, request)
    adapter.model.train(was_training)
    captions = adapter.decode(completions)
    scored = reward(captions, [r for r in records for _ in range(g)], step=step)
    return Rollout(list(records), batch, completions, captions, scored.rewards, dict(scored.terms))


@torch.no_grad()
def collect(
    adapter: VLMAdapter,
    reward: torch.nn.Module,
    batch: dict,
    config: RolloutConfig,
    step: int,
    rank: int = 0,
    device: torch.device | str = "cpu",
    engine: RolloutEngine | None = None,
    refill_from: Sequence[dict] | None = None,
    max_refill_rounds: int = 3,
) -> Rollout:
    """One GRPO rollout of a training batch (`image`, `prompt`, `record` lists), with advantages.

    Each sampling round draws from its own RNG stream, seeded by (seed, rank, step, round), so
    ranks sample independently and a resumed run redraws what the original run drew. With
    `refill_from` (a training set of examples), groups whose rewards are all equal are dropped
    and replaced by groups of fresh examples, for up to `max_refill_rounds` extra rounds."""

    def draw(images: list, prompts: list[str], records: list[Record], round_: int) -> Rollout:
        devices = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(stream_seed(config.seed, rank, step, round_))
            return sample(adapter, reward, images, prompts, records, config, step, device, engine)

    ro = draw(batch["image"], batch["prompt"], list(batch["record"]), 0)
    if refill_from is not None:
        ro = _refill(ro, draw, adapter, refill_from, max_refill_rounds, stream_seed(config.seed, rank, step))
    ro.rewards = ro.rewards.to(device)
    ro.advantages = group_advantages(ro.group_rewards, config.scale_rewards, config.advantage).flatten()
    return ro


def _refill(ro: Rollout, draw, adapter: VLMAdapter, examples: Sequence[dict], max_rounds: int, seed: int) -> Rollout:
    """Keep groups with reward spread; fill the batch back up with groups of fresh examples."""
    size = len(ro.records)
    kept: list[Rollout] = []
    dropped = rounds = 0
    gen = torch.Generator().manual_seed(seed)
    while True:
        spread = ro.group_rewards.std(dim=1) > 0
        dropped += int((~spread).sum())
        if spread.any():
            kept.append(ro.select_groups(spread.nonzero().flatten()))
        have = sum(len(k.records) for k in kept)
        # Sampling is collective under FSDP2: every rank samples while any rank is short.
        if all_ranks(have >= size) or rounds == max_rounds:
            break
        rounds += 1
        fresh = [examples[int(i)] for i in torch.randint(len(examples), (max(size - have, 1),), generator=gen)]
        ro = draw([e["image"] for e in fresh], [e["prompt"] for e in fresh], [e["record"] for e in fresh], rounds)
    out = (
        Rollout.concat(kept, adapter.tokenizer.pad_token_id) if kept else ro
    )  # no group had spread: train on the last round
    return replace(out, dropped_groups=dropped, refill_rounds=rounds)
