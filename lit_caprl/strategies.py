"""`AtomicModelParallelStrategy`: Lightning's FSDP2 strategy with sharded checkpoints written atomically.

Lightning writes a distributed (DCP) checkpoint straight into its directory, over the previous
one of the same name (`last.ckpt`): a run killed during the save leaves a mix of old and new
shards that no longer load. Here every rank writes its shard into a temp directory beside the
target, and rank 0 swaps the finished directory in after all ranks are done.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from lit_caprl.io import replace_dir


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """`ModelParallelStrategy` (same arguments) whose sharded checkpoints are all-or-nothing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # one file: already atomic
        path = Path(self.broadcast(filepath))
        tmp = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        self.barrier("atomic_save_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("atomic_save_written")
        if self.global_rank == 0:
            replace_dir(tmp, path)
        self.barrier("atomic_save_done")
