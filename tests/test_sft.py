"""SFT end to end on tiny models: the loss falls, weights change, exports and init_from chain."""

import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_caprl import mcq
from lit_caprl.callbacks import HFExport
from lit_caprl.data import ShapesCaptionData, ShapesReaderData
from lit_caprl.models.loading import load_model
from lit_caprl.rewards import CapRLQAReward
from lit_caprl.stages import SFTStage
from lit_caprl.stages.optim import Optim


class LossHistory(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(module, data, steps: int, tmp_path: Path, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2"])
def test_sft_loss_falls_and_trainable_params_change(tiny_models, shapes_root, tmp_path, family):
    L.seed_everything(0)
    module = SFTStage(tiny_models[family], optim=Optim(lr=3e-3, warmup_steps=2, schedule="cosine"))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = (
        ShapesCaptionData(shapes_root, batch_size=8, targets="gold")
        if family == "qwen2_5_vl"
        else ShapesReaderData(shapes_root, batch_size=16)
    )
    history = LossHistory()
    _fit(module, data, 30, tmp_path, [history])
    first, last = sum(history.losses[:5]) / 5, sum(history.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    unchanged = [n for n, p in module.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert unchanged == []


def test_loss_scores_only_target_and_eos(tiny_models):
    """The SFT loss equals HF-style cross-entropy with every prompt position labelled -100."""
    module = SFTStage(tiny_models["qwen2"])
    batch = {
        "image": [None, None],
        "prompt": ["what color is the object at top ?", "how many objects are there ?"],
        "prefill": ["", "the answer is"],
        "target": ["red", "top big red circle ."],
    }
    prompts, targets = module.encode(batch)
    assert targets.mask[0].sum() == 2 and targets.ids[0, 1] == module.adapter.eos_id  # "red" + EOS
    kwargs = module.adapter._forward_kwargs(prompts, targets.ids, targets.mask)
    labels = kwargs["input_ids"].clone()
    labels[:, : prompts.input_ids.shape[1]] = -100
    labels[torch.cat([prompts.attention_mask, targets.mask], dim=1) == 0] = -100
    logits = module.policy(**kwargs).logits
    want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(module.loss(batch), want, rtol=1e-5, atol=1e-6)


def test_export_round_trips_with_identical_logits(tiny_models, shapes_root, tmp_path):
    module = SFTStage(tiny_models["qwen2_5_vl"], optim=Optim(lr=3e-3, warmup_steps=1, schedule="cosine"))
    out = tmp_path / "export"
    _fit(module, ShapesCaptionData(shapes_root, batch_size=4), 3, tmp_path, [HFExport(str(out))])
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    record = json.loads((out / mcq.EXPORT_RECORD).read_text())
    assert "answer_format" not in record  # a captioner learns no answer format
    assert record["training"] == {"steps": 3, "max_steps": 3, "stopped_by": "steps"}
    reloaded = load_model(str(out)).model  # from_pretrained, with the attention the stage used
    module.policy.eval()
    data = ShapesCaptionData(shapes_root, batch_size=4)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    prompts, targets = module.encode(batch)
    kwargs = module.adapter._forward_kwargs(prompts, targets.ids, targets.mask)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**kwargs).logits, module.policy(**kwargs).logits, rtol=0, atol=0)


def test_an_export_says_when_its_time_limit_stopped_training(tiny_models, shapes_root, tmp_path):
    class Slow(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            time.sleep(0.6)

    out = tmp_path / "export"
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1000,
        max_time={"seconds": 1},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[Slow(), HFExport(str(out))],
    )
    trainer.fit(SFTStage(tiny_models["qwen2"]), datamodule=ShapesReaderData(shapes_root, batch_size=4))
    training = json.loads((out / mcq.EXPORT_RECORD).read_text())["training"]
    assert training["stopped_by"] == "time_limit" and 1 <= training["steps"] < 1000


def test_reader_export_records_its_answer_format_and_the_reward_asks_in_it(tiny_models, shapes_root, tmp_path):
    out = tmp_path / "export"
    data = ShapesReaderData(shapes_root, batch_size=8, answer_format="cloze")
    _fit(SFTStage(tiny_models["qwen2"]), data, 1, tmp_path, [HFExport(str(out))])
    assert mcq.recorded_format(out) == "cloze"
    assert CapRLQAReward(str(out)).answer_format == "cloze"
    with pytest.raises(ValueError, match=r"trained to answer in the 'cloze' format \(.*lit_caprl.json\) but is asked"):
        CapRLQAReward(str(out), answer_format="letter")


def test_init_from_loads_weights_not_hyperparameters(tiny_models, shapes_root, tmp_path):
    first = SFTStage(tiny_models["qwen2"], optim=Optim(lr=5e-3, warmup_steps=1, schedule="cosine"))
    trainer = _fit(
        first, ShapesReaderData(shapes_root, batch_size=8), 3, tmp_path, [HFExport(str(tmp_path / "export"))]
    )
    ckpt = tmp_path / "first.ckpt"
    trainer.save_checkpoint(ckpt)
    for source in (ckpt, tmp_path / "export"):
        second = SFTStage(tiny_models["qwen2"], init_from=str(source), optim=Optim(lr=1e-5))
        assert second.optim.lr == 1e-5
        for (n, a), (_, b) in zip(first.policy.state_dict().items(), second.policy.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    assert not torch.equal(fresh.lm_head.weight, first.policy.lm_head.weight)


def test_init_from_missing_path_is_an_error(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an export directory nor a checkpoint"):
        SFTStage(tiny_models["qwen2"], init_from=str(tmp_path / "missing.ckpt"))


class _NaNAt(SFTStage):
    """SFT whose loss is NaN on the given steps (a stand-in for an overflow or a poisoned batch)."""

    def __init__(self, *args, bad_steps: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_steps, self.snapshots = set(bad_steps), []

    def loss(self, batch: dict) -> torch.Tensor:
        loss = super().loss(batch)
        return loss * float("nan") if self.trainer.global_step in self.bad_steps else loss

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.snapshots.append(next(self.policy.parameters()).detach().clone())


def test_a_non_finite_step_is_skipped_and_counted(tiny_models, shapes_root, tmp_path):
    module = _NaNAt(tiny_models["qwen2"], bad_steps=(1,), optim=Optim(lr=1e-2, warmup_steps=20, schedule="cosine"))
    trainer = _fit(module, ShapesReaderData(shapes_root, batch_size=4), 3, tmp_path)
    before, after_bad, after_next = module.snapshots[1], module.snapshots[2], next(module.policy.parameters())
    assert torch.equal(before, after_bad)  # step 1 changed nothing
    assert not torch.equal(after_bad, after_next)  # training went on
    assert trainer.callback_metrics["train/skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tiny_models, shapes_root, tmp_path):
    module = _NaNAt(tiny_models["qwen2"], bad_steps=(0, 1, 2, 3), optim=Optim(max_bad_steps=3))
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row had a non-finite loss"):
        _fit(module, ShapesReaderData(shapes_root, batch_size=4), 5, tmp_path)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_vision_lr_applies_to_the_vision_tower_and_projector_only(tiny_models, shapes_root, tmp_path, family):
    """vision_lr = 0 leaves exactly the tower and its projector (as the model itself names them) unchanged."""
    L.seed_everything(0)
    module = SFTStage(tiny_models[family], optim=Optim(lr=3e-3, vision_lr=0.0, warmup_steps=0, schedule="cosine"))
    inner = module.policy.model
    vision = [inner.visual] if family == "qwen2_5_vl" else [inner.vision_tower, inner.multi_modal_projector]
    vision_ids = {id(p) for m in vision for p in m.parameters()}
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    _fit(module, ShapesCaptionData(shapes_root, batch_size=4, targets="gold"), 2, tmp_path)
    changed = {id(p) for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & vision_ids
    assert changed == {id(p) for p in module.parameters()} - vision_ids
