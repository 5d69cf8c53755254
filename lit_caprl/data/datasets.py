"""Map-style datasets over loaded records, and the collate function every DataModule uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from lit_caprl.data.schema import Record


def collate(examples: list[dict]) -> dict[str, list]:
    """Column-wise lists; images stay PIL until the stage's processor sees them."""
    return {k: [e[k] for e in examples] for k in examples[0]}


class ListDataset(Dataset):
    """Items turned into examples on access (images are read lazily, in the loader's workers)."""

    def __init__(self, items: list, make: Callable[[Any], dict]) -> None:
        self.items, self.make = items, make

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.make(self.items[i])


def difficulty(record: Record) -> int:
    """A record's difficulty for curricula: `meta.difficulty`, else ShapesWorld's `meta.level`."""
    value = record.meta.get("difficulty", record.meta.get("level"))
    if not isinstance(value, int):
        raise ValueError(f"{record.source}: record {record.id!r}: meta.difficulty (or meta.level) must be an integer")
    return value


class LevelDataset(ListDataset):
    """Items up to the current `level` of difficulty. Index i maps into that pool (modulo its
    size), so a `CurriculumCallback` can change the level mid-epoch and the next batch obeys.
    The level lives in this process: use `num_workers=0` with a curriculum."""

    def __init__(self, items: list[Record], make: Callable[[Any], dict], level: int | None = None) -> None:
        super().__init__(items, make)
        self.levels = [difficulty(r) for r in items]
        self.set_level(level if level is not None else max(self.levels))

    def set_level(self, level: int) -> None:
        pool = [i for i, lv in enumerate(self.levels) if lv <= level]
        if not pool:
            raise ValueError(f"no training record has difficulty <= {level} (lowest is {min(self.levels)})")
        self.level, self.pool = level, pool

    def __getitem__(self, i: int) -> dict:
        return self.make(self.items[self.pool[i % len(self.pool)]])
