"""What every stage shares about its policy: how it is sharded and what a checkpoint holds."""

from __future__ import annotations

import copy
import random

import numpy as np
import torch

from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.loading import load_policy
from lit_caprl.models.lora import LoRA
from lit_caprl.models.sharding import shard
from lit_caprl.rewards.base import freeze
from lit_caprl.stages.optim import NonFiniteGuard, Optim, adamw_schedule


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

    - `setup_policy`: the policy, its optimizer settings, the non-finite guard and (for GRPO
      and DPO) the frozen reference, built the same way by every stage.
    - `policy_optimizer`: AdamW with warm-up and schedule, the same for every stage.
    - Everything but the policy (rewards, references) is an instrument: it stays in eval mode.
    - `configure_model`: under `ModelParallelStrategy` (FSDP2, data_parallel_size = world size)
      the policy is sharded block by block; under any other strategy it is a no-op.
    - `state_dict` keeps `policy.*` only. Frozen rewards and references are rebuilt from their
      own sources at construction, so checkpoints stay policy-sized and a sharded checkpoint
      load asks for exactly the keys that were saved. Stages with frozen parts therefore set
      `strict_loading = False`.
    - Checkpoints carry the RNG states, so a resumed run draws what the original run would
      have drawn (with the data position that the stateful train loader saves).
    """

    def setup_policy(
        self,
        model: str,
        init_from: str | None,
        dtype: str,
        lora: LoRA | None,
        gradient_checkpointing: bool,
        optim: Optim,
        reference: bool = False,
    ) -> None:
        """Load the policy and set up what trains it. With `reference`, also a frozen copy of
        the starting policy; with LoRA the reference is the policy with its adapters disabled
        (`lora.reference_mode`), so `ref` stays None and no second copy is held."""
        self.optim = optim
        self.nonfinite = NonFiniteGuard(optim.max_bad_steps)
        self.adapter = load_policy(model, init_from, dtype, lora=lora, gradient_checkpointing=gradient_checkpointing)
        self.policy = self.adapter.model.train()  # from_pretrained returns eval mode
        self.ref = freeze(copy.deepcopy(self.policy)) if reference and lora is None else None
        self.ref_adapter = VLMAdapter(self.ref, self.adapter.processor) if self.ref is not None else None

    def policy_optimizer(self, total_steps: int) -> dict:
        """Lightning's optimizer dict for the policy's trainable parameters (see `Optim`)."""
        return adamw_schedule(self.policy.named_parameters(), self.optim, total_steps)

    def on_train_epoch_start(self) -> None:
        """Lightning sets every submodule to train mode at the start of training; rewards and
        references are instruments and stay in eval mode."""
        for name, child in self.named_children():
            if name != "policy":
                child.eval()

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        """Batches hold PIL images and records; each stage encodes and places tensors itself."""
        return batch

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
