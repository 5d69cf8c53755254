"""Rollout engines: the contract every engine keeps, the default and the fallback."""

import lightning as L
import pytest
import torch

from lit_caprl.callbacks import RolloutCallback
from lit_caprl.data import ShapesPromptData
from lit_caprl.engines import HFEngine, Request, make_engine
from lit_caprl.models.loading import load_model
from lit_caprl.rewards import RewardOutput
from lit_caprl.stages import GRPOStage


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a GPU")
def test_auto_falls_back_to_hf_without_a_gpu_and_vllm_says_what_is_missing():
    assert isinstance(make_engine("auto", "unused"), HFEngine)
    with pytest.raises(RuntimeError, match="needs the vllm package and a CUDA GPU"):
        make_engine("vllm", "unused")
    with pytest.raises(ValueError, match="hf, vllm or auto"):
        make_engine("sglang", "unused")


def test_hf_engine_returns_g_grouped_completions_cut_at_eos(tiny_models, shapes_root):
    from PIL import Image

    adapter = load_model(tiny_models["qwen2_5_vl"])
    images = [Image.new("RGB", (84, 84), c) for c in ("red", "blue")]
    texts = [adapter.chat("describe the image .", with_image=True)] * 2
    batch = adapter.encode_prompts(texts, images)
    batch = batch.select(torch.arange(2).repeat_interleave(3))
    torch.manual_seed(0)
    out = HFEngine().generate(adapter, Request(texts, images, batch, 3, 12, 1.0, 1.0))
    assert out.ids.shape[0] == 6 and out.ids.shape[1] <= 12
    for ids, mask, truncated in zip(out.ids, out.mask, out.truncated, strict=True):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # a prefix
        assert truncated == (adapter.eos_id not in ids[:n].tolist())
        if not truncated:
            assert ids[n - 1] == adapter.eos_id  # the EOS is scored, nothing after it


class FixedCaptionEngine:
    """A custom engine: every completion is the same caption; counts its syncs."""

    def __init__(self) -> None:
        self.syncs = 0

    def sync(self, adapter) -> None:
        self.syncs += 1

    def generate(self, adapter, request):
        ids = adapter.tokenizer(
            ["top big red circle ."] * len(request.batch), add_special_tokens=False, return_tensors="pt"
        ).input_ids
        return adapter.completions_from_ids(torch.cat([ids, torch.full((len(ids), 1), adapter.eos_id)], 1))


def test_the_rollout_callback_syncs_and_samples_through_its_engine(tiny_models, shapes_root, tmp_path):
    class Words(torch.nn.Module):
        def forward(self, captions, records, step=0):
            values = torch.tensor([float(len(c.split())) for c in captions])
            return RewardOutput(values, {"words": values})

    seen = []

    class Capture(RolloutCallback):
        def rollout(self, module, batch):
            seen.append(super().rollout(module, batch))
            return seen[-1]

    rollouts = Capture()
    rollouts.engine = engine = FixedCaptionEngine()
    module = GRPOStage(tiny_models["qwen2_5_vl"], Words(), num_generations=2, max_new_tokens=8)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[rollouts],
    )
    trainer.fit(module, datamodule=ShapesPromptData(shapes_root, batch_size=2))
    assert engine.syncs == 2 and len(seen) == 2
    assert all(t == "top big red circle ." for ro in seen for t in ro.texts)
