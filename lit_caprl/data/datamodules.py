"""DataModules. They yield plain examples: `{"image", "prompt", "prefill", "target"}` for SFT,
`{"image", "prompt", "record"}` for RL, `{"image", "prompt", "chosen", "rejected"}` for DPO.
The stage renders them through its model's chat template (see `models/adapter.py`), so the
data path knows nothing about tokenizers.

Each module reads its records through a `RecordReader` (files in any supported format; see
`sources.py`). The ShapesWorld DataModules build on these in `shapes_data.py`.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from lit_caprl.data import prompts
from lit_caprl.data.datasets import LevelDataset, ListDataset, collate
from lit_caprl.data.schema import Record
from lit_caprl.data.sources import RecordReader, ShapesRoot, SourceFormat


class BaseDataModule(L.LightningDataModule):
    """Loaders over `train_set` / `val_set`, made in `setup` from `train_file` / `val_file`."""

    def __init__(
        self,
        train_file: str,
        val_file: str | None,
        batch_size: int,
        num_workers: int,
        reader: RecordReader | None = None,
        shapes: ShapesRoot | None = None,
    ) -> None:
        super().__init__()
        self.train_file, self.val_file = train_file, val_file
        self.batch_size, self.num_workers = batch_size, num_workers
        self.reader, self.shapes = reader or RecordReader(), shapes
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def skipped(self) -> list[str]:
        """The bad records left out so far (with `on_bad_record="skip"`), each naming file, line and field."""
        return self.reader.skipped

    def prepare_data(self) -> None:
        """Write a missing ShapesWorld data set (if asked) and import non-JSONL sources, once,
        on one process per node (Lightning's contract)."""
        if self.shapes is not None:
            self.shapes.prepare()
        for source in (self.train_file, self.val_file):
            if source is not None:
                self.reader.jsonl(source)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        """Training loaders are stateful (torchdata): Lightning saves their position in each
        checkpoint, so a run resumed mid-epoch sees the batches it would have seen. The
        shuffling generator is seeded from the run's seed (`seed_everything`); on several
        data-parallel ranks, the shuffled order is `_rank_sampler`'s."""
        sampler = self._rank_sampler(ds) if shuffle else None
        generator = torch.Generator().manual_seed(torch.initial_seed()) if shuffle and sampler is None else None
        return StatefulDataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            drop_last=shuffle,
            generator=generator,
        )

    def _rank_sampler(self, ds: Dataset) -> _RankSampler | None:
        """This rank's share of each shuffled epoch when several data-parallel ranks train: an
        order drawn from (seed, epoch) alone, its epoch set to the one the trainer (re)starts,
        so a resumed run draws what the uninterrupted run drew. Lightning's own sampler would
        wrap the loader's random sampler, whose generator no checkpoint restores."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        sampler = _RankSampler(ds, shuffle=True, seed=torch.initial_seed(), **trainer.distributed_sampler_kwargs)
        sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        return sampler

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)

    def teardown(self, stage: str) -> None:
        if self.reader.skipped:
            rank_zero_warn(f"end of {stage}: " + self.reader.summary())


class _RankSampler(StatefulDistributedSampler):
    """torchdata's resumable distributed sampler, except that a position saved at the end of an
    epoch starts the next epoch afresh: torchdata would skip that many samples of it too."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.next_yielded >= self.num_samples:
            self.next_yielded = None


class _FileData(BaseDataModule):
    """Images from a train and an optional val source, asked `prompt`. `format` and
    `image_root`: see `RecordReader`; `on_bad_record`: "error" (default) stops at load time on
    any bad record, naming file, line (or row) and field; "skip" trains without them, counting
    and listing them when loading and again when the run ends."""

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        prompt: str = prompts.DEFAULT_CAPTION_PROMPT,
        batch_size: int = 16,
        num_workers: int = 0,
        on_bad_record: Literal["error", "skip"] = "error",
        format: SourceFormat = "jsonl",
        image_root: str | None = None,
    ) -> None:
        super().__init__(train_file, val_file, batch_size, num_workers, RecordReader(format, image_root, on_bad_record))
        self.prompt = prompt

    def sets(self, make: Any) -> None:
        """`train_set` / `val_set` from `make(path) -> ListDataset` (no val set without `val_file`)."""
        self.train_set = make(self.train_file)
        self.val_set = make(self.val_file) if self.val_file else None


class CaptionData(_FileData):
    """Image -> caption SFT (targets: each record's `captions`)."""

    def targets(self, record: Record) -> list[str]:
        return list(record.captions)

    def _pairs(self, path: str) -> ListDataset:
        pairs = [(r, c) for r in self.reader.load(path) for c in self.targets(r)]
        if not pairs:
            raise ValueError(f"{path}: no record has captions to train on")
        return ListDataset(pairs, self._example)

    def _example(self, pair: tuple[Record, str]) -> dict:
        record, target = pair
        return {"image": record.load_image(), "prompt": self.prompt, "prefill": "", "target": target}

    def setup(self, stage: str | None = None) -> None:
        self.sets(self._pairs)


class PromptData(_FileData):
    """Images to caption for RL: examples carry the record (its MCQs feed the reward). Records
    with `meta.difficulty` (or ShapesWorld's `meta.level`) support a curriculum (`set_level`)."""

    def _example(self, record: Record) -> dict:
        return {"image": record.load_image(), "prompt": self.prompt, "record": record}

    def _with_questions(self, path: str) -> list[Record]:
        """RL needs questions: the reward asks them. A record without any is a bad record."""
        records = self.reader.load(path)
        bare = [
            f"{r.source}: questions: record {r.id!r} has none; the reward needs some"
            for r in records
            if not r.questions
        ]
        if bare and (self.reader.on_bad_record == "error" or len(bare) == len(records)):
            raise ValueError("\n".join(bare))
        self.reader.skip(bare)
        return [r for r in records if r.questions]

    def setup(self, stage: str | None = None) -> None:
        train = self._with_questions(self.train_file)
        has_levels = all("difficulty" in r.meta or "level" in r.meta for r in train)
        self.train_set = LevelDataset(train, self._example) if has_levels else ListDataset(train, self._example)
        self.val_set = ListDataset(self._with_questions(self.val_file), self._example) if self.val_file else None

    def set_level(self, level: int) -> None:
        """Train on records of difficulty <= `level` from the next batch on (see `CurriculumCallback`)."""
        if not isinstance(self.train_set, LevelDataset):
            raise ValueError(f"{self.train_file}: a curriculum needs meta.difficulty (or meta.level) on every record")
        if self.num_workers:
            raise ValueError("a curriculum changes the data set in this process; set num_workers: 0")
        self.train_set.set_level(level)


class PairData(_FileData):
    """Preference pairs for DPO: records with `chosen` and `rejected` captions (e.g. from `mine-pairs`)."""

    def _pairs(self, path: str) -> ListDataset:
        records = self.reader.load(path)
        missing = [r.id for r in records if r.chosen is None]
        if missing:
            raise ValueError(f"{path}: records without chosen/rejected captions: {missing[:5]}")
        return ListDataset(records, self._example)

    def _example(self, record: Record) -> dict:
        return {
            "id": record.id,
            "image": record.load_image(),
            "prompt": self.prompt,
            "chosen": record.chosen,
            "rejected": record.rejected,
        }

    def setup(self, stage: str | None = None) -> None:
        self.sets(self._pairs)
