"""The rollout before every GRPO training step, as a callback users can swap or extend.

`GRPOStage` declares it (`configure_callbacks`), so a run without one in `trainer.callbacks`
still gets the default. It runs on every rank, under `torch.no_grad()` (not `inference_mode`:
the rollout's tensors enter the training forward afterwards), and hands the stage a `Rollout`
in `batch["rollout"]`; the stage returns it as `outputs["rollout"]` for logging callbacks.
"""

from __future__ import annotations

import lightning as L
import torch

from lit_caprl.engines import make_engine
from lit_caprl.mining import PairWriter, mine_groups
from lit_caprl.rollout import Rollout, collect


class RolloutCallback(L.Callback):
    """Samples G captions per prompt with the current policy, scores and refills them, and
    computes advantages (`lit_caprl.rollout.collect`). The sampling settings are the GRPO
    stage's arguments (`num_generations`, `max_new_tokens`, `temperature`, `top_p`), so one
    config (or sweep) key sets each of them.

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
        ro = batch["rollout"] = self.rollout(pl_module, batch)
        if self.dynamic_sampling:
            log = dict(on_step=True, on_epoch=False, batch_size=1)
            pl_module.log("rollout/dropped_groups", float(ro.dropped_groups), **log)
            pl_module.log("rollout/refill_rounds", float(ro.refill_rounds), **log)
        if self.pairs is not None and trainer.is_global_zero:
            policy = pl_module.hparams.model
            self.pairs.append(mine_groups(ro.records, ro.texts, ro.group_rewards.cpu(), self.pair_min_margin, policy))

    def rollout(self, module: L.LightningModule, batch: dict) -> Rollout:
        """The rollout of `batch` under the module's policy and reward (the place to extend)."""
        refill = module.trainer.datamodule.train_set if self.dynamic_sampling else None
        return collect(
            module.adapter,
            module.reward,
            batch,
            module.rollout_config,
            module.rollout_step,
            module.global_rank,
            module.device,
            self.engine,
            refill,
            self.max_refill_rounds,
        )
