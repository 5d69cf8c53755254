"""DataModules. They yield plain examples: `{"image", "prompt", "prefill", "target"}` for SFT,
`{"image", "prompt", "record"}` for RL. The stage renders them through its model's chat
template (see `models/adapter.py`), so the data path knows nothing about tokenizers.

The ShapesWorld modules read the data set under `root` (`lit-caprl data shapes --out ROOT`
writes one); with `generate=True` they write it in `prepare_data` when it is missing, like
`download=True` elsewhere. A `root` without a data set is otherwise an error: a mistyped path
must not silently train on fresh data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lit_caprl import mcq
from lit_caprl.data import prompts, shapes
from lit_caprl.data.importer import cached_import
from lit_caprl.data.schema import DataError, Record, load_records
from lit_caprl.errors import ConfigError


class _ShapesSource:
    """Mixin for ShapesWorld DataModules: the data set under `root`, written in `prepare_data`
    when missing only if `generate` (like `download=True`), else used as it is."""

    def _shapes(self, root: str, n_train: int, n_val: int, seed: int, generate: bool = False) -> None:
        self.root, self.n_train, self.n_val, self.seed = Path(root), n_train, n_val, seed
        self.generate = generate

    def prepare_data(self) -> None:
        if (self.root / "train.jsonl").is_file():
            return
        if not self.generate:
            raise ConfigError(f"data.init_args.root: {self.root} holds no ShapesWorld data set (train.jsonl); write "
                              f"one with `lit-caprl data shapes --out {self.root}`, or set generate: true")  # fmt: skip
        shapes.write_dataset(self.root, self.n_train, self.n_val, self.seed)


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


class _Base(L.LightningDataModule):
    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        """Training loaders are stateful (torchdata): Lightning saves their position in each
        checkpoint, so a run resumed mid-epoch sees the batches it would have seen. The
        shuffling generator is seeded from the run's seed (`seed_everything`)."""
        generator = torch.Generator().manual_seed(torch.initial_seed()) if shuffle else None
        return StatefulDataLoader(
            ds, batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate,
            num_workers=self.num_workers, drop_last=shuffle, generator=generator,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class _FileData(_Base):
    """Images from a train and an optional val source, asked `prompt`.

    `format="jsonl"` (default) reads our schema (see `schema.py`); `caprl-qa`, `verl`,
    `captions` and `prism` read those formats (a parquet file, a directory or glob of shards,
    .json/.jsonl, a `datasets` directory) through the same importer as `lit-caprl data
    import`, once, into a cache reused while the inputs are unchanged (`importer.cached_import`;
    `image_root` resolves relative image paths). `on_bad_record="error"` (default) stops at load
    time on any bad record, naming file, line (or row) and field; "skip" drops bad records but
    counts them in `skipped`, warns when loading and reports them again when the run ends."""

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        prompt: str = prompts.DEFAULT_CAPTION_PROMPT,
        batch_size: int = 16,
        num_workers: int = 0,
        on_bad_record: Literal["error", "skip"] = "error",
        format: Literal["jsonl", "caprl-qa", "verl", "captions", "prism"] = "jsonl",
        image_root: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.train_file, self.val_file, self.prompt = train_file, val_file, prompt
        self.on_bad_record, self.format, self.image_root = on_bad_record, format, image_root
        self.skipped: list[str] = []

    def _jsonl(self, source: str) -> Path:
        if self.format == "jsonl":
            return Path(source)
        return cached_import(source, self.format, self.image_root, skip_bad=self.on_bad_record == "skip")

    def prepare_data(self) -> None:
        """Import non-JSONL sources once, on one process per node (Lightning's contract)."""
        for source in (self.train_file, self.val_file):
            if source is not None:
                self._jsonl(source)

    def _load(self, path: str) -> list[Record]:
        jsonl = self._jsonl(path)
        try:
            records, problems = load_records(jsonl, self.on_bad_record)
        except DataError as e:
            if self.on_bad_record == "skip":  # nothing good was left
                raise
            raise DataError(e.problems, "(data.init_args.on_bad_record: skip trains without such records, "
                                        "counting and listing them)") from None  # fmt: skip
        skipped = [str(p) for p in problems]
        if jsonl != Path(path):  # rows the import skipped
            skipped = json.loads((jsonl.parent / "import.json").read_text())["skipped_rows"] + skipped
        if skipped:
            self.skipped += skipped
            rank_zero_warn(self._summary(skipped))
        return records

    @staticmethod
    def _summary(problems: list[str]) -> str:
        shown = "\n".join(problems[:10])
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        return f"skipped {len(problems)} bad records (on_bad_record=skip):\n{shown}{more}"

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)

    def teardown(self, stage: str) -> None:
        if self.skipped:
            rank_zero_warn(f"end of {stage}: " + self._summary(self.skipped))


class CaptionData(_FileData):
    """Image -> caption SFT (targets: each record's `captions`)."""

    def targets(self, record: Record) -> list[str]:
        return list(record.captions)

    def _pairs(self, path: str) -> list[tuple[Record, str]]:
        records = self._load(path)
        pairs = [(r, c) for r in records for c in self.targets(r)]
        if not pairs:
            raise ValueError(f"{path}: no record has captions to train on")
        return pairs

    def _example(self, pair: tuple[Record, str]) -> dict:
        record, target = pair
        return {"image": record.load_image(), "prompt": self.prompt, "prefill": "", "target": target}

    def setup(self, stage: str | None = None) -> None:
        self.train_set = ListDataset(self._pairs(self.train_file), self._example)
        self.val_set = ListDataset(self._pairs(self.val_file), self._example) if self.val_file else None


class ShapesCaptionData(_ShapesSource, CaptionData):
    """ShapesWorld captions; `targets="short"` trains on captions that name the most salient
    one or two objects (what the CapRL demo starts RL from), "partial" on random subsets of the
    objects, "gold" on dense captions."""

    def __init__(
        self,
        root: str = "runs/data/shapes",
        n_train: int = 4000,
        n_val: int = 500,
        seed: int = 0,
        targets: Literal["short", "partial", "gold", "all"] = "short",
        prompt: str = prompts.DEFAULT_CAPTION_PROMPT,
        batch_size: int = 16,
        num_workers: int = 0,
        generate: bool = False,
    ) -> None:
        super().__init__(f"{root}/train.jsonl", f"{root}/val.jsonl", prompt, batch_size, num_workers)
        self._shapes(root, n_train, n_val, seed, generate)
        self.which = targets

    def targets(self, record: Record) -> list[str]:
        if self.which in ("short", "partial"):
            return record.meta.get(f"{self.which}_captions", [])
        return list(record.captions) + (record.meta.get("partial_captions", []) if self.which == "all" else [])


def reader_examples(
    records: list[Record], seed: int, answer_format: str = "letter", empty_captions: float = 1.0
) -> list[dict]:
    """(caption, question) pairs labelled by what the caption alone answers.

    Every record contributes its gold caption, its partial captions and (in an `empty_captions`
    share of records, drawn with the seed) the empty caption, each asked every question with
    shuffled options; a question about an object the caption omits is labelled "cannot answer"
    (the last option), which is what keeps the reward honest: an empty caption earns nothing,
    except on a question that gives its own answer away (ShapesWorld's leaky questions), which
    QA curation must then catch. Besides the SFT keys, an example carries the `options` shown
    and the index of the `correct` one.
    """
    rng = random.Random(seed)
    out = []
    for r in records:
        captions = [*r.captions, *r.meta.get("partial_captions", [])]
        if empty_captions >= 1.0 or rng.random() < empty_captions:  # no draw at 1.0: default examples unchanged
            captions.append("")
        for cap in captions:
            claimed = shapes.parse_caption(cap)
            for q in r.questions:
                options = list(q.options)
                rng.shuffle(options)
                value = shapes.answer_from_objects(q.question, options, claimed)
                shown = prompts.shown_options(options, answer_format)
                correct = options.index(value) if value is not None else len(options)
                out.append({
                    "image": None,
                    "prompt": prompts.reader_question(cap, q.question, options, answer_format),
                    "prefill": prompts.answer_prefix(answer_format),
                    "target": mcq.answer_text(shown, correct, answer_format),
                    "options": shown,
                    "correct": correct,
                })  # fmt: skip
    return out


class _ShapesQA(_ShapesSource, _Base):
    """MCQ SFT on ShapesWorld: `make_examples` turns records into (prompt, target) examples.
    `answer_format` (letter | cloze, see `lit_caprl.mcq`) must match the one the trained
    model is later asked in (the reward's, `eval`'s and `curate`'s `answer_format`)."""

    def __init__(
        self,
        root: str = "runs/data/shapes",
        n_train: int = 4000,
        n_val: int = 500,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        answer_format: mcq.AnswerFormat = "letter",
        generate: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        mcq.check_format(answer_format)
        self.answer_format = answer_format
        self._shapes(root, n_train, n_val, seed, generate)

    def make_examples(self, records: list[Record], seed: int, training: bool) -> list:
        raise NotImplementedError

    def to_example(self, item) -> dict:
        return item

    def setup(self, stage: str | None = None) -> None:
        train, _ = load_records(self.root / "train.jsonl")
        val, _ = load_records(self.root / "val.jsonl")
        self.train_set = ListDataset(self.make_examples(train, self.seed, training=True), self.to_example)
        self.val_set = ListDataset(self.make_examples(val, self.seed + 1, training=False), self.to_example)


class ShapesReaderData(_ShapesQA):
    """Text-only reader SFT on ShapesWorld: caption + MCQ -> answer.

    `empty_captions`: the share of training records that also contribute their empty caption.
    Its questions all read "cannot answer", the answer a reader learns first; with every
    record's empty caption (37% "cannot answer" examples), a tiny reader answered little else
    for ~1,000 steps before it learned to look answers up (see `experiments/shapes/reader_sft.yaml`).
    Validation always uses every empty caption."""

    def __init__(self, *args: Any, empty_captions: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= empty_captions <= 1.0:
            raise ValueError(f"empty_captions must be in [0, 1], got {empty_captions}")
        self.empty_captions = empty_captions

    def make_examples(self, records: list[Record], seed: int, training: bool) -> list[dict]:
        return reader_examples(records, seed, self.answer_format, self.empty_captions if training else 1.0)


def visual_examples(records: list[Record], seed: int, answer_format: str = "letter") -> list[tuple[Record, str, str]]:
    """(record, prompt, target) for a VLM that answers MCQs by looking (QA curation's visual
    judge): every question of every record, options shuffled, target the answer."""
    rng = random.Random(seed)
    out = []
    for r in records:
        for q in r.questions:
            order = rng.sample(range(len(q.options)), len(q.options))
            options = [q.options[j] for j in order]
            target = mcq.answer_text(options, options.index(q.answer_text), answer_format)
            out.append((r, prompts.visual_question(q.question, options, answer_format), target))
    return out


class ShapesVQAData(_ShapesQA):
    """Image + MCQ -> answer SFT on ShapesWorld: trains the visual judge of `lit-caprl curate`."""

    def make_examples(self, records: list[Record], seed: int, training: bool) -> list[tuple[Record, str, str]]:
        return visual_examples(records, seed, self.answer_format)

    def to_example(self, item: tuple[Record, str, str]) -> dict:
        record, prompt, target = item
        prefill = prompts.answer_prefix(self.answer_format)
        return {"image": record.load_image(), "prompt": prompt, "prefill": prefill, "target": target}


class PromptData(_FileData):
    """Images to caption for RL: examples carry the record (its MCQs feed the reward)."""

    def _example(self, record: Record) -> dict:
        return {"image": record.load_image(), "prompt": self.prompt, "record": record}

    def _with_questions(self, path: str) -> list[Record]:
        """RL needs questions: the reward asks them. A record without any is a bad record."""
        records = self._load(path)
        bare = [r for r in records if not r.questions]
        if bare:
            shown = "\n".join(f"{r.source}: questions: record {r.id!r} has none; the reward needs some" for r in bare)
            if self.on_bad_record == "error" or len(bare) == len(records):
                raise ValueError(shown)
            self.skipped += shown.split("\n")
            rank_zero_warn(self._summary(shown.split("\n")))
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


class ShapesPromptData(_ShapesSource, PromptData):
    """ShapesWorld images and MCQs for RL."""

    def __init__(
        self,
        root: str = "runs/data/shapes",
        n_train: int = 4000,
        n_val: int = 500,
        seed: int = 0,
        prompt: str = prompts.DEFAULT_CAPTION_PROMPT,
        batch_size: int = 16,
        num_workers: int = 0,
        generate: bool = False,
    ) -> None:
        super().__init__(f"{root}/train.jsonl", f"{root}/val.jsonl", prompt, batch_size, num_workers)
        self._shapes(root, n_train, n_val, seed, generate)


class PairData(_FileData):
    """Preference pairs for DPO: records with `chosen` and `rejected` captions (e.g. from `mine-pairs`)."""

    def _pairs(self, path: str) -> list[Record]:
        records = self._load(path)
        missing = [r.id for r in records if r.chosen is None]
        if missing:
            raise ValueError(f"{path}: records without chosen/rejected captions: {missing[:5]}")
        return records

    def _example(self, record: Record) -> dict:
        return {"id": record.id, "image": record.load_image(), "prompt": self.prompt,
                "chosen": record.chosen, "rejected": record.rejected}  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        self.train_set = ListDataset(self._pairs(self.train_file), self._example)
        self.val_set = ListDataset(self._pairs(self.val_file), self._example) if self.val_file else None
