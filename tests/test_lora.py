"""LoRA, QLoRA, 8-bit AdamW and gradient checkpointing on CPU."""

import lightning as L
import pytest
import torch
from transformers import AutoModelForImageTextToText

from lit_caprl.callbacks import HFExport, RolloutCallback
from lit_caprl.data import ShapesCaptionData, ShapesPromptData
from lit_caprl.models.loading import load_model
from lit_caprl.models.lora import LoRA
from lit_caprl.rewards import RewardOutput
from lit_caprl.stages import GRPOStage, SFTStage
from lit_caprl.stages.optim import Optim


class WordCount(torch.nn.Module):
    def forward(self, captions, records, step=0):
        values = torch.tensor([float(len(c.split())) for c in captions])
        return RewardOutput(values, {"words": values})


def _grpo(module, tmp_path, callbacks=()) -> list:
    captured = []

    class Capture(RolloutCallback):
        def rollout(self, pl_module, batch):
            captured.append(super().rollout(pl_module, batch))
            return captured[-1]

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[Capture(), *callbacks],
    )
    return trainer, captured


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_lora_grpo_trains_adapters_only_and_the_reference_is_the_base(quantize, tiny_models, shapes_root, tmp_path):
    L.seed_everything(0)
    lora = LoRA(r=4, alpha=8, quantize=quantize)
    module = GRPOStage(
        tiny_models["qwen2_5_vl"],
        WordCount(),
        num_generations=4,
        max_new_tokens=8,
        beta=0.04,
        lora=lora,
        optim=Optim(lr=1e-2, name="adamw8bit"),
    )
    assert module.ref is None  # the reference is the policy with adapters off, not a copy
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)  # vision tower frozen by default
    trainer, captured = _grpo(module, tmp_path)
    trainer.fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=2))

    changed = {n for n, p in module.policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    ro = captured[0]
    base = load_model(tiny_models["qwen2_5_vl"], quantize=quantize)
    with torch.no_grad():
        expected = base.completion_logprobs(ro.prompts, ro.completions)
        reference = module.reference_logprobs(ro)
        policy = module.sequence_logprobs(module.adapter, ro)
    mask = ro.completions.mask.bool()
    torch.testing.assert_close(reference[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy[mask], expected[mask], atol=1e-3)  # the adapters did move the policy


@pytest.mark.parametrize("merge", [True, False])
def test_lora_exports_merged_or_as_adapters(merge, tiny_models, shapes_root, tmp_path):
    L.seed_everything(0)
    optim = Optim(lr=1e-2, warmup_steps=0, schedule="cosine")
    module = SFTStage(tiny_models["qwen2_5_vl"], lora=LoRA(r=4, alpha=8), optim=optim)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[HFExport(merge_lora=merge)],
    )
    data = ShapesCaptionData(shapes_root, batch_size=4)
    trainer.fit(module, datamodule=data)
    export = tmp_path / "export"
    batch = next(iter(data.val_dataloader()))
    module.eval()
    with torch.no_grad():
        expected = module.loss(batch)
    if merge:  # a plain model any HF user loads
        assert not (export / "adapter_config.json").exists()
        AutoModelForImageTextToText.from_pretrained(export)
        reloaded = SFTStage(str(export))
    else:  # adapters only, on top of the base model named by `model`
        assert (export / "adapter_config.json").exists()
        reloaded = SFTStage(tiny_models["qwen2_5_vl"], init_from=str(export))
        assert any(p.requires_grad for n, p in reloaded.policy.named_parameters() if "lora_" in n)
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.loss(batch), expected, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_models, shapes_root):
    data = ShapesCaptionData(shapes_root, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    grads = []
    for checkpointing in (False, True):
        module = SFTStage(tiny_models["qwen2_5_vl"], gradient_checkpointing=checkpointing)
        module.loss(batch).backward()
        grads.append({n: p.grad for n, p in module.policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)
