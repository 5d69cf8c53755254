"""Write the trained policy as a `save_pretrained` directory the next stage (or anyone) loads."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lit_caprl.io import atomic_dir


def save_export(adapter, out: str | Path) -> Path:
    """Safetensors weights + processor/tokenizer, written atomically: a crash never leaves a
    half-written export where a later stage would take it as done."""
    with atomic_dir(out) as tmp:
        adapter.model.save_pretrained(tmp)
        adapter.processor.save_pretrained(tmp)
    return Path(out)


class HFExport(L.Callback):
    """At the end of `fit`, export the module's policy to `dirpath` (rank 0 only); by default
    `<trainer.default_root_dir>/export`, where `lit-caprl pipeline` looks for a finished stage."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_export(pl_module.adapter, self.dirpath or Path(trainer.default_root_dir) / "export")
        trainer.strategy.barrier("hf_export")
