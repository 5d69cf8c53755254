"""What every stage shares about its policy: how it is sharded and what a checkpoint holds."""

from __future__ import annotations

import random

import numpy as np
import torch

from lit_caprl.models.sharding import shard
from lit_caprl.stages.optim import adamw_schedule


def rng_states() -> dict:
    """This process's torch, CUDA, numpy and Python RNG states, as tensors and plain numbers
    (checkpoints load with `weights_only=True`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class PolicyStage:
    """LightningModule mixin for a module whose trained part is `self.policy`.

    - `policy_optimizer`: AdamW with warm-up and schedule, the same for every stage.
    - `configure_model`: under `ModelParallelStrategy` (FSDP2, data_parallel_size = world size)
      the policy is sharded block by block; under any other strategy it is a no-op.
    - `state_dict` keeps `policy.*` only. Frozen rewards and references are rebuilt from their
      own sources at construction, so checkpoints stay policy-sized and a sharded checkpoint
      load asks for exactly the keys that were saved. Stages with frozen parts therefore set
      `strict_loading = False`.
    - Checkpoints carry the RNG states, so a resumed run draws what the original run would
      have drawn (with the data position that the stateful train loader saves).
    """

    def policy_optimizer(self, total_steps: int) -> dict:
        """Lightning's optimizer dict for the policy's trainable parameters, from the stage's
        `lr`, `vision_lr`, `weight_decay`, `warmup_steps`, `schedule` and `optimizer`."""
        hp = self.hparams
        return adamw_schedule(
            self.policy.named_parameters(), hp.lr, hp.weight_decay, hp.warmup_steps, total_steps,
            hp.schedule, hp.optimizer, vision_lr=hp.vision_lr,
        )  # fmt: skip

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            shard(self.policy, self.device_mesh["data_parallel"])

    def state_dict(self, *args, **kwargs) -> dict:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        return type(state)((k, v) for k, v in state.items() if k.startswith(f"{prefix}policy."))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
