"""Write the trained policy as a `save_pretrained` directory the next stage (or anyone) loads."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from peft import PeftModel

from lit_caprl.io import atomic_dir
from lit_caprl.mcq import EXPORT_RECORD
from lit_caprl.models.lora import merged_copy
from lit_caprl.models.sharding import full_state_dict, is_sharded


def save_export(
    model: torch.nn.Module, processor, out: str | Path, state_dict: dict | None = None, record: dict | None = None
) -> Path:
    """Safetensors weights + processor/tokenizer, written atomically: a crash never leaves a
    half-written export where a later stage would take it as done. `state_dict` carries the
    consolidated weights of a sharded model; `record` (e.g. the MCQ answer format the model
    learned) goes to `lit_caprl.json` beside them."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        processor.save_pretrained(tmp)
        if record:
            (Path(tmp) / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Path(out)


def training_record(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
    """How far training got and what stopped it: `steps` (the step budget), `time_limit` (the
    `max_time` safety net: the model is not the one its config promises), or `epochs`."""
    steps, budget = trainer.global_step, trainer.max_steps
    rollout = getattr(pl_module, "rollout_step", None)
    rollout_budget = getattr(pl_module.hparams, "max_rollout_steps", None)
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining("train") if timer is not None else None
    if rollout is not None and rollout_budget is not None and rollout >= rollout_budget:
        stopped = "steps"
    elif budget > 0 and steps >= budget:
        stopped = "steps"
    elif remaining is not None and remaining <= 0:
        stopped = "time_limit"
    else:
        stopped = "epochs"
    record = {"steps": steps, "max_steps": budget, "stopped_by": stopped}
    if rollout is not None:
        record |= {"rollout_steps": rollout, "max_rollout_steps": rollout_budget}
    return record


class HFExport(L.Callback):
    """At the end of `fit`, export the module's policy to `dirpath`; by default
    `<trainer.default_root_dir>/export`, where `lit-caprl pipeline` looks for a finished stage.

    An FSDP2-sharded policy is gathered on every rank, then rank 0 alone writes it. A LoRA
    policy is exported with its adapters merged into the weights (a plain model, the default),
    or with `merge_lora: false` as the adapters alone, which `init_from` also accepts (the only
    choice for a sharded LoRA policy). A model trained on a DataModule with an `answer_format`
    (reader and VLM MCQ SFT) records it, so the reward, `eval` and `curate` ask it that way.
    The record also says how far training got and what stopped it (`training_record`): the
    pipeline reports a stage its time limit cut short.
    """

    def __init__(self, dirpath: str | None = None, merge_lora: bool = True) -> None:
        self.dirpath, self.merge_lora = dirpath, merge_lora

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.adapter.model
        if isinstance(model, PeftModel) and self.merge_lora and is_sharded(model):
            raise ValueError(
                "HFExport: merging LoRA into an FSDP2-sharded policy is not supported; "
                "set merge_lora: false to export the adapters (init_from accepts them)"
            )
        state = full_state_dict(model)
        if trainer.is_global_zero:
            if isinstance(model, PeftModel) and self.merge_lora:
                model = merged_copy(model)
            out = self.dirpath or Path(trainer.default_root_dir) / "export"
            answer_format = getattr(trainer.datamodule, "answer_format", None)
            record = {"training": training_record(trainer, pl_module)}
            if answer_format:
                record["answer_format"] = answer_format
            save_export(model, pl_module.adapter.processor, out, state, record)
        trainer.strategy.barrier("hf_export")
