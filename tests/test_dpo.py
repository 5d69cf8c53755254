"""Pair mining and the DPO stage on tiny models: pairs pass the schema, the policy moves, the reference does not."""

import lightning as L
import pytest
import torch

from lit_caprl.data import PairData
from lit_caprl.data.schema import load_records
from lit_caprl.mining import select_pair
from lit_caprl.stages import DPOStage
from lit_caprl.stages.optim import Optim


def test_select_pair_applies_the_margin_filter():
    assert select_pair([0.2, 0.9, 0.5, 0.1], min_margin=0.5) == (1, 3)
    assert select_pair([0.2, 0.9, 0.5, 0.1], min_margin=0.8) == (1, 3)  # margin 0.8 is enough
    assert select_pair([0.2, 0.9, 0.5, 0.1], min_margin=0.81) is None
    assert select_pair([0.4, 0.4, 0.4], min_margin=0.0) is None  # a tie is never a preference
    assert select_pair([0.0, 1.0, 1.0, 0.0], min_margin=0.0) == (1, 0)  # first index wins ties


def test_mined_pairs_pass_the_schema_and_carry_provenance(pairs_dir, tiny_models):
    records, problems = load_records(pairs_dir / "pairs.jsonl")
    assert problems == [] and len(records) > 0
    for r in records:
        assert r.chosen != r.rejected and r.image.is_relative_to(pairs_dir.resolve())
        assert r.meta["rewards"]["chosen"] > r.meta["rewards"]["rejected"]
        assert r.meta["policy"] == tiny_models["qwen2_5_vl"]


@pytest.mark.parametrize("precompute", [False, True])
def test_one_dpo_step_moves_policy_not_reference(pairs_dir, tiny_models, tmp_path, precompute):
    L.seed_everything(0)
    module = DPOStage(tiny_models["qwen2_5_vl"], beta=0.1, precompute_ref_logps=precompute, optim=Optim(lr=1e-2))
    policy0 = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    ref = module.ref
    ref0 = {n: p.detach().clone() for n, p in ref.named_parameters()}
    pairs = str(pairs_dir / "pairs.jsonl")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        val_check_interval=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=PairData(pairs, pairs, batch_size=2))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in ref.parameters())
    moved = [n for n, p in module.policy.named_parameters() if not torch.equal(p, policy0[n])]
    assert len(moved) > 0.9 * len(policy0)
    assert all(torch.equal(p, ref0[n]) for n, p in ref.named_parameters())
    assert (module.ref is None) == precompute  # precomputing drops the reference copy
    # At step 0 the policy equals the reference: the sigmoid loss is log 2, the margin 0.
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)
    for key in ("train/rewards/chosen", "train/rewards/accuracy", "train/rewards/margin", "val/loss"):
        assert key in trainer.callback_metrics, key


def test_rpo_adds_the_chosen_captions_token_nll(pairs_dir, tiny_models, tmp_path):
    """RPO: at step 0 (policy == reference) the loss is log 2 plus alpha times the per-token
    NLL of the chosen captions, here computed from the policy's own forward before training."""
    pairs = str(pairs_dir / "pairs.jsonl")
    data = PairData(pairs, pairs, batch_size=len(load_records(pairs)[0]))  # one batch: every pair
    data.setup("fit")
    L.seed_everything(0)
    module = DPOStage(tiny_models["qwen2_5_vl"], beta=0.1, rpo_alpha=0.5, optim=Optim(lr=1e-2))
    with torch.no_grad():
        chosen, _, tokens = module.sequence_logps(module.adapter, next(iter(data.train_dataloader())))
    want = torch.log(torch.tensor(2.0)).item() + 0.5 * (-chosen.sum() / tokens.sum()).item()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(want, abs=1e-4)
    assert trainer.callback_metrics["train/nll"].item() > 0


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_pair_logps_equal_each_caption_scored_on_its_own(pairs_dir, tiny_models, family):
    """DPO encodes each pair's prompt and image once for both captions (a shared KV cache);
    the log-probs must equal scoring every caption in its own forward pass, with gradients."""
    pairs = str(pairs_dir / "pairs.jsonl")
    data = PairData(pairs, pairs, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = DPOStage(tiny_models[family])
    chosen, rejected, tokens = module.sequence_logps(module.adapter, batch)
    adapter = module.adapter
    for i, prompt in enumerate(batch["prompt"]):
        one = adapter.encode_prompts([adapter.chat(prompt, with_image=True)], [batch["image"][i]])
        for caption, got in ((batch["chosen"][i], chosen[i]), (batch["rejected"][i], rejected[i])):
            comps = adapter.encode_completions([caption])
            alone = (adapter.completion_logprobs(one, comps) * comps.mask).sum()
            assert got.item() == pytest.approx(alone.item(), abs=1e-4)
        assert tokens[i] == len(adapter.encode_completions([batch["chosen"][i]]).ids[0])
    chosen.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters())
