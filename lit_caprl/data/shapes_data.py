"""ShapesWorld's DataModules: captions, prompts for RL, the reader's and the visual judge's
MCQs, and the text-only judge's preference pairs. Each reads the data set under `root`
through a `ShapesRoot` (`generate=True` writes it when missing, like `download=True`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from lit_caprl import mcq
from lit_caprl.data import prompts, shapes, shapes_qa
from lit_caprl.data.datamodules import BaseDataModule, CaptionData, PromptData
from lit_caprl.data.datasets import ListDataset
from lit_caprl.data.schema import Record
from lit_caprl.data.sources import ShapesRoot


class ShapesCaptionData(CaptionData):
    """ShapesWorld captions; `targets="short"` trains on captions that name the most salient
    one or two objects (what the CapRL demo starts RL from), "partial" on random subsets of the
    objects, "gold" on dense captions, "all" on gold and partial."""

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
        self.shapes, self.which = ShapesRoot(Path(root), n_train, n_val, seed, generate), targets

    def targets(self, record: Record) -> list[str]:
        if self.which in ("short", "partial"):
            return record.meta.get(f"{self.which}_captions", [])
        return list(record.captions) + (record.meta.get("partial_captions", []) if self.which == "all" else [])


class ShapesPromptData(PromptData):
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
        self.shapes = ShapesRoot(Path(root), n_train, n_val, seed, generate)


class _ShapesSets(BaseDataModule):
    """A ShapesWorld data set's train and val splits, each turned into examples by `dataset`;
    validation draws with seed + 1, so its examples differ from training's."""

    def __init__(
        self,
        root: str = "runs/data/shapes",
        n_train: int = 4000,
        n_val: int = 500,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        generate: bool = False,
    ) -> None:
        shapes_root = ShapesRoot(Path(root), n_train, n_val, seed, generate)
        train, val = shapes_root.split("train"), shapes_root.split("val")
        super().__init__(train, val, batch_size, num_workers, shapes=shapes_root)
        self.seed = seed

    def dataset(self, records: list[Record], seed: int, training: bool) -> ListDataset:
        """One split's examples; each subclass says what they are."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self.dataset(self.reader.load(self.train_file), self.seed, training=True)
        self.val_set = self.dataset(self.reader.load(self.val_file), self.seed + 1, training=False)


class _ShapesQA(_ShapesSets):
    """MCQ SFT on ShapesWorld, examples from `shapes_qa`. `answer_format` (letter | cloze, see
    `lit_caprl.mcq`) must match the one the trained model is later asked in (the reward's,
    `eval`'s and `curate`'s `answer_format`)."""

    def __init__(self, *args: Any, answer_format: mcq.AnswerFormat = "letter", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mcq.check_format(answer_format)
        self.answer_format = answer_format


class ShapesReaderData(_ShapesQA):
    """Text-only reader SFT on ShapesWorld: caption + MCQ -> answer (`shapes_qa.reader_examples`).

    `empty_captions`: the share of training records that also contribute their empty caption.
    Its questions all read "cannot answer", the answer a reader learns first; with every
    record's (37% "cannot answer" examples) a tiny reader answered little else for ~1,000
    steps before it learned to look answers up. Validation always uses every empty caption."""

    def __init__(self, *args: Any, empty_captions: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= empty_captions <= 1.0:
            raise ValueError(f"empty_captions must be in [0, 1], got {empty_captions}")
        self.empty_captions = empty_captions

    def dataset(self, records: list[Record], seed: int, training: bool) -> ListDataset:
        share = self.empty_captions if training else 1.0
        return ListDataset(shapes_qa.reader_examples(records, seed, self.answer_format, share), dict)


class ShapesVQAData(_ShapesQA):
    """Image + MCQ -> answer SFT on ShapesWorld: trains the visual judge of `lit-caprl curate`."""

    def dataset(self, records: list[Record], seed: int, training: bool) -> ListDataset:
        return ListDataset(shapes_qa.visual_examples(records, seed, self.answer_format), self._example)

    def _example(self, item: tuple[Record, str, str]) -> dict:
        record, prompt, target = item
        prefill = prompts.answer_prefix(self.answer_format)
        return {"image": record.load_image(), "prompt": prompt, "prefill": prefill, "target": target}


def judge_pairs(records: list[Record], seed: int, per_record: int = 2) -> list[dict]:
    """Text-only preference pairs: each record's gold caption over `per_record` corrupted ones
    (`shapes.corrupted_caption`), for a caption reward model that never sees the image."""
    rng = random.Random(f"judge-{seed}")
    pairs = []
    for r in records:
        objects = [shapes.ShapeObject(**o) for o in r.meta["objects"]]
        for _ in range(per_record):
            pairs.append({"chosen": r.captions[0], "rejected": shapes.corrupted_caption(rng, objects)})
    return pairs


class ShapesJudgeData(_ShapesSets):
    """Gold-vs-corrupted caption pairs for `RewardModelStage`: a judge without eyes, the kind of
    learned reward CapRL's QA reward is compared with."""

    def dataset(self, records: list[Record], seed: int, training: bool) -> ListDataset:
        return ListDataset(judge_pairs(records, seed), dict)


class ShapesImageTextData(_ShapesSets):
    """Images with their gold captions for `ClipStage`: the tiny CLIP of the image-caption
    similarity reward learns which caption belongs to which scene."""

    def __init__(self, *args: Any, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, batch_size=batch_size, **kwargs)

    def dataset(self, records: list[Record], seed: int, training: bool) -> ListDataset:
        return ListDataset(records, self._example)

    @staticmethod
    def _example(record: Record) -> dict:
        return {"image": record.load_image(), "caption": record.captions[0]}
