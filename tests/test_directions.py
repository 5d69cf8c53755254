"""Each update moves the policy the way its objective says, measured from outside the stage.

The stages' own tests check that parameters move and metrics are logged; these catch the
bugs that pass those: negated or misaligned advantages, a loss type whose divisor is wrong
by a sign or a scale across micro-batches, DPO's chosen and rejected swapped.
"""

import lightning as L
import pytest
import torch

from lit_caprl.callbacks import RolloutCallback
from lit_caprl.data import PairData, ShapesPromptData
from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT
from lit_caprl.data.schema import load_records
from lit_caprl.rewards import CapRLQAReward, RewardOutput
from lit_caprl.stages import DPOStage, GRPOStage
from lit_caprl.stages.optim import Optim


def _trainer(tmp_path, callbacks=(), **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        **kwargs,
    )


class _LengthReward(torch.nn.Module):
    """Reward = caption length in hundreds of characters: deterministic, different within a group."""

    def forward(self, captions, records, step=0):
        values = torch.tensor([len(c) / 100 for c in captions])
        return RewardOutput(values, {"length": values})


def _reference_loss(
    logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, loss_type: str, max_new_tokens: int
) -> torch.Tensor:
    """The GRPO objective at ratio 1 (one inner epoch), written out per loss type over the whole
    rollout at once: the formulas of the GRPO, DAPO and Dr. GRPO papers and TRL's `loss_type`."""
    per_token = -advantages[:, None] * logp * mask  # the surrogate's gradient at ratio 1
    if loss_type == "grpo":
        return (per_token.sum(1) / mask.sum(1)).mean()
    if loss_type in ("bnpo", "dapo"):  # one rank: the batch's and the global token count agree
        return per_token.sum() / mask.sum()
    return per_token.sum() / (len(logp) * max_new_tokens)  # dr_grpo


def _advantages(rewards: torch.Tensor, scale: str, estimator: str) -> torch.Tensor:
    """Each caption's reward against its group's: the mean of the group (GRPO) or of the other
    G-1 captions (RLOO), over the group's or the batch's std, or unscaled (Dr. GRPO)."""
    g = rewards.shape[1]
    if estimator == "rloo":
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (g - 1)
    else:
        baseline = rewards.mean(1, keepdim=True)
    std = {"group": rewards.std(1, keepdim=True), "batch": rewards.std(), "none": None}[scale]
    return ((rewards - baseline) / (std + 1e-4) if std is not None else rewards - baseline).flatten()


@pytest.mark.parametrize(
    "loss_type, scale, estimator",
    [
        ("grpo", "group", "grpo"),
        ("bnpo", "group", "grpo"),
        ("dr_grpo", "none", "grpo"),
        ("dapo", "group", "grpo"),
        ("dapo", "batch", "rloo"),
    ],
)
def test_a_grpo_step_follows_the_gradient_of_its_objective(
    tiny_models, shapes_root, tmp_path, loss_type, scale, estimator
):
    """One step through `training_step`, the rollout split into three micro-batches, with plain
    SGD: the update equals -lr x the gradient of the objective written out in the test over the
    whole rollout (advantages from the rewards by hand). Then captions that beat their group's
    mean became more likely and the others less. Catches negated or misaligned advantages and
    any loss type's divisor or micro-batch weighting gone wrong."""
    L.seed_everything(0)
    g, lr = 4, 1e-3
    module = GRPOStage(
        tiny_models["qwen2_5_vl"],
        _LengthReward(),
        num_generations=g,
        max_new_tokens=8,
        temperature=1.0,
        micro_batch_size=g,
        loss_type=loss_type,
        scale_rewards=scale,
        advantage=estimator,
        dtype="float64",
        optim=Optim(lr=lr, max_grad_norm=0.0),
    )
    sgd = torch.optim.SGD(module.policy.parameters(), lr=lr)
    module.configure_optimizers = lambda: {
        "optimizer": sgd,
        "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(sgd, lambda _: 1.0),
    }
    theta0 = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    seen = {}

    class Capture(RolloutCallback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
            ro = seen["rollout"] = batch["rollout"]
            logp = pl_module.adapter.completion_logprobs(ro.prompts, ro.completions, 1.0)
            mask = ro.completions.mask.to(logp.dtype)
            rewards = torch.tensor([len(t) / 100 for t in ro.texts], dtype=logp.dtype).view(-1, g)
            seen["adv"] = adv = _advantages(rewards, scale, estimator)
            seen["before"] = (logp.detach() * mask).sum(1)
            names, params = zip(*pl_module.policy.named_parameters(), strict=True)
            grads = torch.autograd.grad(_reference_loss(logp, mask, adv, loss_type, 8), params)
            seen["grad"] = dict(zip(names, grads, strict=True))

    _trainer(tmp_path, [Capture()], max_steps=1).fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=3))
    ro, adv = seen["rollout"], seen["adv"]
    assert (adv != 0).any()
    for name, p in module.policy.named_parameters():
        step = (theta0[name] - p.detach()) / lr
        torch.testing.assert_close(step, seen["grad"][name], rtol=1e-5, atol=1e-6, msg=f"{name} moved off the gradient")
    with torch.no_grad():
        after = (module.adapter.completion_logprobs(ro.prompts, ro.completions, 1.0) * ro.completions.mask).sum(1)
    delta = after - seen["before"]
    assert (adv * delta).sum() > 0  # the advantage-weighted log-likelihood rose
    assert delta[adv > 0].mean() > 0 > delta[adv < 0].mean()


def test_mined_pairs_hold_the_captions_their_rewards_belong_to(pairs_dir, tiny_models):
    """Each pair's chosen and rejected captions, rescored by a fresh reward of the same config,
    earn the rewards the miner recorded for them, and the chosen one more."""
    records, problems = load_records(pairs_dir / "pairs.jsonl")
    assert problems == [] and len(records) >= 4
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=2)
    chosen = reward([r.chosen for r in records], records).rewards
    rejected = reward([r.rejected for r in records], records).rewards
    assert chosen.tolist() == pytest.approx([r.meta["rewards"]["chosen"] for r in records], abs=1e-5)
    assert rejected.tolist() == pytest.approx([r.meta["rewards"]["rejected"] for r in records], abs=1e-5)
    assert (chosen > rejected).all()


def _caption_logps(module: DPOStage, records, texts: list[str]) -> torch.Tensor:
    """Summed log-probs of `texts` given each record's image, one caption per forward row,
    through the adapter directly (not the stage's chosen+rejected batching)."""
    adapter = module.adapter
    text = adapter.chat(DEFAULT_CAPTION_PROMPT, with_image=True)
    prompts = adapter.encode_prompts([text] * len(records), [r.load_image() for r in records])
    comps = adapter.encode_completions(texts)
    with torch.no_grad():
        logp = adapter.completion_logprobs(prompts, comps)
    return (logp * comps.mask).sum(-1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_steps_make_chosen_captions_more_likely_than_rejected(pairs_dir, tiny_models, tmp_path, loss_type):
    """A few DPO steps on the mined pairs widen log p(chosen) - log p(rejected), measured pair by
    pair outside the stage; with the sides swapped this margin would shrink."""
    records = load_records(pairs_dir / "pairs.jsonl")[0]
    L.seed_everything(0)
    module = DPOStage(tiny_models["qwen2_5_vl"], beta=0.1, loss_type=loss_type, optim=Optim(lr=1e-3))
    margin0 = _caption_logps(module, records, [r.chosen for r in records]) - _caption_logps(
        module, records, [r.rejected for r in records]
    )
    pairs = str(pairs_dir / "pairs.jsonl")
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.fit(module, datamodule=PairData(pairs, None, batch_size=len(records)))
    margin = _caption_logps(module, records, [r.chosen for r in records]) - _caption_logps(
        module, records, [r.rejected for r in records]
    )
    assert (margin - margin0).mean() > 0
    assert trainer.callback_metrics["train/rewards/margin"] > 0  # the stage's own view agrees
