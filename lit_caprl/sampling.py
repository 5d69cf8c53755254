"""Sample G captions per image with a policy and score them: the first half of every GRPO
rollout and of offline pair mining, so both see exactly the same captions and rewards."""

from __future__ import annotations

import hashlib

import torch

from lit_caprl.data.schema import Record
from lit_caprl.engines import HFEngine, Request, RolloutEngine
from lit_caprl.models.adapter import Completions, PromptBatch, VLMAdapter
from lit_caprl.rewards.base import RewardOutput


@torch.no_grad()
def sample_and_score(
    adapter: VLMAdapter,
    reward: torch.nn.Module,
    images: list,
    prompts: list[str],
    records: list[Record],
    g: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    step: int = 0,
    device: torch.device | str = "cpu",
    engine: RolloutEngine | None = None,
) -> tuple[PromptBatch, Completions, list[str], RewardOutput]:
    """G sampled captions per image, scored: the shared first half of GRPO rollouts and pair mining.

    Sequences are grouped consecutively by image (rows i*G .. i*G+G-1 belong to image i)."""
    texts = [adapter.chat(p, with_image=True) for p in prompts]
    batch = adapter.encode_prompts(texts, images).to(device)
    batch = adapter.select(batch, torch.arange(len(images), device=device).repeat_interleave(g))
    was_training = adapter.model.training
    adapter.model.eval()
    request = Request(texts, images, batch, g, max_new_tokens, temperature, top_p)
    completions = (engine or HFEngine()).generate(adapter, request)
    adapter.model.train(was_training)
    captions = adapter.decode(completions)
    scored = reward(captions, [r for r in records for _ in range(g)], step=step)
    return batch, completions, captions, scored


def stream_seed(*parts: object) -> int:
    """A seed that is a pure function of `parts` (e.g. run seed, rank, rollout step): every rank
    samples independently, and a resumed run redraws exactly what the original run drew."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
