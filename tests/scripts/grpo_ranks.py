"""A GRPO run on 1 or 2 CPU ranks, launched by the multi-rank tests (Lightning re-runs this
script once per rank). It writes the policy's full weights after training to `--out`.

`--scripted` replaces sampling with fixed captions of uneven length, so a 1-rank and a 2-rank
run see exactly the same rollouts and their updates can be compared; with `--sgd` the update
is minus the gradient, so no optimizer or clipping hides a wrong scale. Without it, the
policy samples naturally (completions end at different lengths on each rank).
"""

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_caprl.callbacks import HFExport, RolloutCallback
from lit_caprl.data import ShapesPromptData
from lit_caprl.models.sharding import full_state_dict
from lit_caprl.rewards import RewardOutput
from lit_caprl.rollout import Rollout, group_advantages
from lit_caprl.stages import GRPOStage
from lit_caprl.stages.optim import Optim
from lit_caprl.strategies import AtomicModelParallelStrategy


class WordCount(torch.nn.Module):
    """A deterministic reward with spread inside every group: the caption's word count."""

    def forward(self, captions, records, step=0):
        values = torch.tensor([float(len(c.split())) for c in captions])
        return RewardOutput(values, {"words": values})


class ScriptedRollouts(RolloutCallback):
    """Caption j of scene n is 2 + 3j + 2n^2 words of its gold caption (repeated as needed):
    fixed lengths that differ within groups and between ranks' batches."""

    def rollout(self, module, batch):
        records, g = list(batch["record"]), module.hparams.num_generations
        texts = []
        for r in records:
            n = int(r.id.split("-")[-1])
            texts += [" ".join((r.captions[0].split() * 10)[: 2 + 3 * j + 2 * n * n]) for j in range(g)]
        adapter = module.adapter
        prompts = adapter.encode_prompts([adapter.chat(p, with_image=True) for p in batch["prompt"]], batch["image"])
        prompts = prompts.to(module.device).select(torch.arange(len(records)).repeat_interleave(g))
        completions = adapter.encode_completions(texts).to(module.device)
        scored = module.reward(texts, [r for r in records for _ in range(g)])
        ro = Rollout(records, prompts, completions, texts, scored.rewards, dict(scored.terms))
        ro.advantages = group_advantages(ro.group_rewards).flatten()
        return ro


class RecordedRollouts(RolloutCallback):
    """Natural sampling; keeps each rollout's scenes and completion lengths, to show that the
    ranks saw different scenes and decoded for different numbers of steps."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def rollout(self, module, batch):
        ro = super().rollout(module, batch)
        self.seen.append({"ids": [r.id for r in ro.records], "lengths": ro.completions.mask.sum(-1).tolist()})
        return ro


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp2"], required=True)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--scripted", action="store_true")
    p.add_argument("--shard-reference", action="store_true")
    p.add_argument("--root", default=".")
    p.add_argument("--resume", default=None)
    p.add_argument("--micro-batch-size", type=int, default=3)
    # Plain SGD at lr 1 without clipping: each update is minus the gradient, far above float32 rounding.
    p.add_argument("--sgd", action="store_true")
    a = p.parse_args()
    L.seed_everything(0)
    devices = 1 if a.strategy == "single" else 2
    strategy = {
        "single": "auto",
        "ddp": "ddp",
        "fsdp2": AtomicModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    }[a.strategy]
    module = GRPOStage(
        a.policy,
        WordCount(),
        num_generations=4,
        max_new_tokens=12 if a.scripted else 24,
        beta=0.04,
        mu=2,
        loss_type="dapo",
        micro_batch_size=a.micro_batch_size,
        shard_reference=a.shard_reference,
        max_rollout_steps=a.steps,
        optim=Optim(lr=1e-3, max_grad_norm=0.0 if a.sgd else 1.0),
    )
    if a.sgd:

        def sgd() -> dict:
            opt = torch.optim.SGD(module.policy.parameters(), lr=1.0)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)}

        module.configure_optimizers = sgd
    if not a.scripted:  # EOS grows likelier with length, so captions end at natural, uneven lengths
        module.policy.generation_config.exponential_decay_length_penalty = (2, 1.6)
    rollouts = ScriptedRollouts() if a.scripted else RecordedRollouts()
    checkpoints = ModelCheckpoint(dirpath=f"{a.root}/ckpt", save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=100,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=a.root,
        callbacks=[rollouts, checkpoints, HFExport()],
        use_distributed_sampler=True,
    )
    trainer.fit(module, datamodule=ShapesPromptData(a.data, batch_size=a.batch_size), ckpt_path=a.resume)
    if not a.scripted:
        Path(f"{a.out}.rank{trainer.global_rank}.json").write_text(json.dumps(rollouts.seen))
    state = full_state_dict(module.policy) or module.policy.state_dict()
    if trainer.is_global_zero:
        torch.save({k: v.detach().clone() for k, v in state.items()}, a.out)


if __name__ == "__main__":
    main()
