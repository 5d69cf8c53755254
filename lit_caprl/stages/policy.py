"""What every stage shares about its policy: how it is sharded and what a checkpoint holds."""

from __future__ import annotations

from lit_caprl.models.sharding import shard


class PolicyStage:
    """LightningModule mixin for a module whose trained part is `self.policy`.

    - `configure_model`: under `ModelParallelStrategy` (FSDP2, data_parallel_size = world size)
      the policy is sharded block by block; under any other strategy it is a no-op.
    - `state_dict` keeps `policy.*` only. Frozen rewards and references are rebuilt from their
      own sources at construction, so checkpoints stay policy-sized and a sharded checkpoint
      load asks for exactly the keys that were saved. Stages with frozen parts therefore set
      `strict_loading = False`.
    """

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            shard(self.policy, self.device_mesh["data_parallel"])

    def state_dict(self, *args, **kwargs) -> dict:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        return type(state)((k, v) for k, v in state.items() if k.startswith(f"{prefix}policy."))
