"""Rollouts: image -> prompt -> G sampled captions -> rewards -> advantages, attached to the batch.

Runs at the start of every training batch, on every rank, under `torch.no_grad()` (not
`inference_mode`: the rollout's tensors enter the training forward afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from lit_caprl.engines import make_engine
from lit_caprl.mining import PairWriter, mine_groups
from lit_caprl.models.adapter import Completions, PromptBatch
from lit_caprl.models.sharding import all_ranks
from lit_caprl.rewards.base import RewardOutput
from lit_caprl.sampling import sample_and_score, stream_seed
from lit_caprl.stages.losses import group_advantages


@dataclass
class Rollout:
    """One rollout batch: N = prompts * G sequences, grouped consecutively by prompt."""

    prompts: PromptBatch
    completions: Completions
    texts: list[str]
    rewards: Tensor  # [B, G]
    advantages: Tensor  # [N]
    terms: dict[str, Tensor]  # named reward parts, [N] each
    old_logp: Tensor | None  # [N, L]; None when the policy has not moved since sampling (mu == 1)
    ref_logp: Tensor | None  # [N, L]; None when beta == 0
    temperature: float
    max_new_tokens: int
    records: list  # [B], the record of each group (after dynamic sampling, not always the batch's)


class RolloutCallback(L.Callback):
    """Samples G captions per prompt with the current policy and scores them. The sampling
    settings (`num_generations`, `max_new_tokens`, `temperature`, `top_p`) are the GRPO
    stage's hyper-parameters, so one config (or sweep) key sets each of them.

    Args:
        pairs_dir: also mine DPO pairs (best vs worst caption of each group) from the scored
            rollouts into `pairs_dir/pairs.jsonl`, appended after every rollout step.
        pair_min_margin: keep a group's pair only if best - worst reward >= this.
        dynamic_sampling: DAPO's filter: drop groups whose rewards are all equal (they carry no
            gradient) and refill with groups of fresh training prompts, up to `max_refill_rounds`
            extra sampling rounds; the counts are logged as `rollout/dropped_groups` and
            `rollout/refill_rounds`. Needs a DataModule with `train_set`.
        engine: what samples (see `lit_caprl.engines`): hf, vllm, or auto (vLLM when installed
            and a GPU exists, else the policy's own `generate`).
    """

    def __init__(
        self,
        pairs_dir: str | None = None,
        pair_min_margin: float = 0.0,
        dynamic_sampling: bool = False,
        max_refill_rounds: int = 3,
        engine: str = "auto",
    ) -> None:
        self.engine_name, self.engine = engine, None
        self.pairs = PairWriter(pairs_dir) if pairs_dir else None
        self.pair_min_margin = pair_min_margin
        self.dynamic_sampling, self.max_refill_rounds = dynamic_sampling, max_refill_rounds

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.engine is None:
            self.engine = make_engine(self.engine_name, pl_module.hparams.model)  # weights: synced each rollout

    @torch.no_grad()
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        batch["rollout"] = self.rollout(pl_module, batch)

    def sample(self, module, images: list, prompts: list[str], records: list, round_: int = 0):
        """G scored captions per prompt: (prompts, completions, texts, RewardOutput). The draw
        uses its own RNG stream, seeded by (seed, rank, rollout step, refill round)."""
        hp = module.hparams
        self.engine.sync(module.adapter)
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(stream_seed(hp.seed, module.global_rank, module.rollout_step, round_))
            return sample_and_score(
                module.adapter, module.reward, images, prompts, records, hp.num_generations,
                hp.max_new_tokens, hp.temperature, hp.top_p, module.rollout_step, module.device, self.engine,
            )  # fmt: skip

    @torch.no_grad()
    def rollout(self, module, batch: dict) -> Rollout:
        hp = module.hparams
        g = hp.num_generations
        records = list(batch["record"])
        prompts, completions, texts, scored = self.sample(module, batch["image"], batch["prompt"], records)
        if self.dynamic_sampling:
            prompts, completions, texts, scored, records = self._refill(
                module, prompts, completions, texts, scored, records
            )
        rewards = scored.rewards.to(module.device).view(-1, g)
        if self.pairs is not None and module.trainer.is_global_zero:
            pairs = mine_groups(records, texts, rewards.cpu(), self.pair_min_margin, module.hparams.model)
            self.pairs.append(pairs)
        advantages = group_advantages(rewards, hp.scale_rewards, hp.advantage).flatten()
        old_logp = module.sequence_logprobs(module.adapter, prompts, completions, hp.temperature) if hp.mu > 1 else None
        ref_logp = module.reference_logprobs(prompts, completions, hp.temperature) if hp.beta > 0 else None
        return Rollout(prompts, completions, texts, rewards, advantages, scored.terms, old_logp, ref_logp,
                       hp.temperature, hp.max_new_tokens, records)  # fmt: skip

    def _refill(self, module, prompts, completions, texts, scored, records):
        """Keep groups with reward spread; fill the batch back up with groups of fresh prompts."""
        adapter = module.adapter
        g, size = module.hparams.num_generations, len(records)
        kept: list[_Groups] = []
        dropped = rounds = 0
        train_set = module.trainer.datamodule.train_set
        gen = torch.Generator().manual_seed(stream_seed(module.hparams.seed, module.global_rank, module.rollout_step))
        while True:
            spread = scored.rewards.view(-1, g).std(dim=1) > 0
            dropped += int((~spread).sum())
            groups = spread.nonzero().flatten()
            rows = (groups[:, None] * g + torch.arange(g)).flatten()
            if len(groups):
                kept.append(_Groups(
                    adapter.select(prompts, rows.to(module.device)),
                    completions.select(rows),
                    [texts[i] for i in rows.tolist()],
                    RewardOutput(scored.rewards[rows], {k: v[rows] for k, v in scored.terms.items()}),
                    [records[i] for i in groups.tolist()],
                ))  # fmt: skip
            have = sum(len(k.records) for k in kept)
            # Sampling is collective under FSDP2: every rank samples while any rank is short.
            if all_ranks(have >= size) or rounds == self.max_refill_rounds:
                break
            rounds += 1
            fresh = [train_set[int(i)] for i in torch.randint(len(train_set), (max(size - have, 1),), generator=gen)]
            records = [e["record"] for e in fresh]
            prompts, completions, texts, scored = self.sample(
                module, [e["image"] for e in fresh], [e["prompt"] for e in fresh], records, rounds
            )
        log = dict(on_step=True, on_epoch=False, batch_size=1)
        module.log("rollout/dropped_groups", float(dropped), **log)
        module.log("rollout/refill_rounds", float(rounds), **log)
        if not kept:  # no group had spread: train on the last round (all advantages are 0)
            return prompts, completions, texts, scored, records
        terms = {k: torch.cat([x.scored.terms[k] for x in kept]) for k in kept[0].scored.terms}
        return (
            adapter.concat([x.prompts for x in kept]),
            adapter.concat_completions([x.completions for x in kept]),
            [t for x in kept for t in x.texts],
            RewardOutput(torch.cat([x.scored.rewards for x in kept]), terms),
            [r for x in kept for r in x.records],
        )


@dataclass
class _Groups:
    """Whole groups kept by dynamic sampling (G consecutive rows per record)."""

    prompts: PromptBatch
    completions: Completions
    texts: list[str]
    scored: RewardOutput
    records: list
