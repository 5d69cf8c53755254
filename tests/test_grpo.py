"""GRPO end to end on tiny models: the policy moves, the reader and the reference do not."""

import lightning as L
import torch

from lit_caprl.callbacks import RewardLoggingCallback, RolloutCallback
from lit_caprl.data import ShapesPromptData
from lit_caprl.data.schema import load_records
from lit_caprl.rewards import CapRLQAReward, CompositeReward, LengthPenalty, RewardOutput
from lit_caprl.stages import GRPOStage
from lit_caprl.stages.optim import Optim


def _trainer(tmp_path, steps: int, callbacks) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def test_one_grpo_step_moves_policy_only(tiny_models, shapes_root, tmp_path):
    L.seed_everything(0)
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=2)
    module = GRPOStage(
        tiny_models["qwen2_5_vl"],
        reward,
        num_generations=4,
        max_new_tokens=8,
        beta=0.04,
        mu=2,
        micro_batch_size=4,
        optim=Optim(lr=1e-2),
    )
    policy0 = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    reader0 = {n: p.detach().clone() for n, p in module.reward.named_parameters()}
    ref0 = {n: p.detach().clone() for n, p in module.ref.named_parameters()}
    assert all(not p.requires_grad for p in module.reward.parameters())
    rollouts = RolloutCallback(pairs_dir=str(tmp_path / "pairs"))
    trainer = _trainer(tmp_path, 1, [rollouts, RewardLoggingCallback()])
    trainer.fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=2))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in module.reward.parameters())
    assert not any(id(p) in optimized for p in module.ref.parameters())
    moved = [n for n, p in module.policy.named_parameters() if not torch.equal(p, policy0[n])]
    assert len(moved) > 0.9 * len(policy0)
    assert all(torch.equal(p, reader0[n]) for n, p in module.reward.named_parameters())
    assert all(torch.equal(p, ref0[n]) for n, p in module.ref.named_parameters())
    assert not module.reward.training and not module.ref.training
    assert module.rollout_step == 1
    pairs, problems = load_records(tmp_path / "pairs" / "pairs.jsonl")  # mined from the scored rollout
    assert problems == [] and all(p.meta["rewards"]["chosen"] > p.meta["rewards"]["rejected"] for p in pairs)
    logged = trainer.callback_metrics
    for key in (
        "train/reward",
        "reward/caprl_qa/mean",
        "reward/frac_zero_std_groups",
        "completions/mean_length",
        "completions/truncated_ratio",
        "train/clip_fraction",
        "train/kl",
    ):
        assert key in logged, key


class _SpreadOnlyForEvenScenes(torch.nn.Module):
    """Test reward: a caption checksum for even-numbered scenes, a constant for odd ones
    (whose groups then have zero reward std and carry no gradient)."""

    def forward(self, captions, records, step=0):
        values = [
            float(sum(map(ord, c)) % 97) if int(r.id.split("-")[-1]) % 2 == 0 else 1.0
            for c, r in zip(captions, records, strict=True)
        ]
        return RewardOutput(torch.tensor(values), {"checksum": torch.tensor(values)})


def test_dynamic_sampling_drops_zero_std_groups_and_refills(tiny_models, shapes_root, tmp_path):
    L.seed_everything(0)
    module = GRPOStage(
        tiny_models["qwen2_5_vl"],
        _SpreadOnlyForEvenScenes(),
        num_generations=4,
        max_new_tokens=8,
        micro_batch_size=8,
        optim=Optim(lr=1e-3),
    )
    captured = []

    class Capture(RolloutCallback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
            captured.append(batch["rollout"])

    rollouts = Capture(dynamic_sampling=True, max_refill_rounds=8)
    trainer = _trainer(tmp_path, 2, [rollouts])
    trainer.fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=4))
    assert trainer.callback_metrics["rollout/dropped_groups"] > 0
    for ro in captured:
        assert ro.group_rewards.shape == (4, 4)  # refilled to the full batch of 4 groups
        assert (ro.group_rewards.std(dim=1) > 0).all()  # no zero-std group is left
        assert len(ro.prompts) == len(ro.completions.ids) == len(ro.texts) == 16


def test_grpo_with_a_composite_reward_logs_each_term(tiny_models, shapes_root, tmp_path):
    L.seed_everything(0)
    reward = CompositeReward(
        {"qa": CapRLQAReward(tiny_models["qwen2"], num_draws=2), "length": LengthPenalty(l1=4, l2=8)},
        {"length": 0.5},
    )
    module = GRPOStage(tiny_models["qwen2_5_vl"], reward, num_generations=2, max_new_tokens=8, optim=Optim(lr=1e-3))
    trainer = _trainer(tmp_path, 1, [RolloutCallback(), RewardLoggingCallback()])
    trainer.fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=2))
    for key in ("reward/qa/mean", "reward/length/mean", "reward/excluded_qa/mean", "train/reward"):
        assert key in trainer.callback_metrics, key
    assert not reward.training and all(not p.requires_grad for p in reward.parameters())


class _NaNReward(torch.nn.Module):
    def forward(self, captions, records, step=0):
        rewards = torch.tensor([float("nan")] + [1.0] * (len(captions) - 1))
        return RewardOutput(rewards, {"nan": rewards})


def test_a_nan_reward_skips_the_step_instead_of_poisoning_the_policy(tiny_models, shapes_root, tmp_path):
    reward = _NaNReward()
    module = GRPOStage(tiny_models["qwen2_5_vl"], reward, num_generations=2, max_new_tokens=8, optim=Optim(lr=1e-2))
    policy0 = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    trainer = _trainer(tmp_path, 1, [RolloutCallback()])
    trainer.fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=2))
    assert all(torch.equal(p, policy0[n]) for n, p in module.policy.named_parameters())
    assert trainer.callback_metrics["train/skipped_steps"] == 1
