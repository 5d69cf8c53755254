"""Evaluation: Prism-style caption utility on any multiple-choice benchmark, caption fidelity
(ShapesWorld object precision/recall) and reader accuracy.

Pure loops over an adapter; no Lightning. Used by `lit-caprl eval` / `report` and the tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from lit_caprl import mcq
from lit_caprl.data import prompts, shapes, shapes_qa
from lit_caprl.data.schema import Record
from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.rewards.caprl_qa import CapRLQAReward


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def check_num_captions(num_captions: int, temperature: float) -> None:
    if temperature == 0 and num_captions > 1:
        raise ValueError(
            f"num_captions={num_captions} with greedy decoding (temperature 0) gives identical "
            "captions; set a temperature > 0"
        )


@torch.no_grad()
def caption_images(
    adapter: VLMAdapter,
    images: list,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_captions: int = 1,
) -> list[str]:
    """`num_captions` captions per image, an image's consecutively, in one batch: each image and
    prompt encoded once, its cache shared by its captions. `temperature=0` is greedy."""
    device = adapter.model.device
    text = adapter.chat(prompt, with_image=True)
    batch = adapter.encode_prompts([text] * len(images), images).to(device)
    if num_captions > 1:
        batch = batch.select(torch.arange(len(images), device=device).repeat_interleave(num_captions))
    sample = temperature > 0
    comps = adapter.generate(
        batch,
        max_new_tokens,
        temperature=temperature if sample else 1.0,
        top_p=top_p,
        do_sample=sample,
        group=num_captions,
    )
    return adapter.decode(comps)


def generate_captions(
    adapter: VLMAdapter,
    records: list[Record],
    prompt: str = prompts.DEFAULT_CAPTION_PROMPT,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    num_captions: int = 1,
) -> list[str]:
    """`caption_images` over `records` in batches of `batch_size`, seeded once."""
    check_num_captions(num_captions, temperature)
    torch.manual_seed(seed)
    adapter.model.eval()
    out = []
    for chunk in _chunks(records, batch_size):
        out += caption_images(
            adapter, [r.load_image() for r in chunk], prompt, max_new_tokens, temperature, num_captions=num_captions
        )
    return out


def scene_objects(record: Record) -> list[shapes.ShapeObject]:
    """The ground-truth objects of a ShapesWorld record."""
    if "objects" not in record.meta:
        raise ValueError(f"{record.source}: meta.objects missing; object fidelity needs ShapesWorld records")
    return [shapes.ShapeObject(**o) for o in record.meta["objects"]]


def repetition(caption: str) -> float:
    """The share of a caption's sentences that repeat an earlier one of it: a reward that pays
    per mention (or a judge fooled by emphasis) is hacked by saying the same thing again."""
    sentences = [s.strip() for s in caption.split(".") if s.strip()]
    return (len(sentences) - len(set(sentences))) / len(sentences) if sentences else 0.0


def caption_fidelity(captions: list[str], records: list[Record]) -> dict[str, float]:
    """Object precision (what captions claim is true), recall (how much of the scene they say),
    micro-averaged over all claims/objects, and mean caption length in words."""
    hits = claims = truth = 0
    for cap, rec in zip(captions, records, strict=True):
        h, c, t = shapes_qa.match_counts(shapes_qa.parse_caption(cap), scene_objects(rec))
        hits, claims, truth = hits + h, claims + c, truth + t
    return {
        "precision": hits / claims if claims else 0.0,
        "recall": hits / truth,
        "length": sum(len(c.split()) for c in captions) / len(captions),
    }


def reader_accuracy(
    reader: VLMAdapter, records: list[Record], answer_format: mcq.AnswerFormat = "letter", seed: int = 0
) -> dict[str, float]:
    """Accuracy on (caption, question) pairs labelled by what the caption answers (gold, partial
    and empty captions), and the share of "cannot answer" questions it gets right."""
    reader.model.eval()
    examples = shapes_qa.reader_examples(records, seed, answer_format)
    texts = [reader.chat(e["prompt"], with_image=False, prefill=e["prefill"]) for e in examples]
    picks = mcq.option_logits(reader, texts, [e["options"] for e in examples], answer_format).argmax(-1).tolist()
    correct = [p == e["correct"] for p, e in zip(picks, examples, strict=True)]
    cannot = [c for c, e in zip(correct, examples, strict=True) if e["correct"] == len(e["options"]) - 1]
    return {"accuracy": sum(correct) / len(correct), "cannot_answer_accuracy": sum(cannot) / max(len(cannot), 1)}


def utility_judge(reader: str, answer_format: mcq.AnswerFormat | None = None) -> CapRLQAReward:
    """The reader as an evaluator: 4 seeded MCQ draws per image (as many as the GRPO reward asks),
    scored by argmax (right or wrong); `caption_utility` averages several seeds."""
    return CapRLQAReward(
        reader, num_draws=4, mode="logprob", score="argmax", rotations=False, answer_format=answer_format
    )


def caption_scores(judge: CapRLQAReward, captions: list[str], records: list[Record], seeds=(0, 1, 2)) -> torch.Tensor:
    """Each caption's utility: the share of its image's MCQs the reader answers right from the
    caption alone (Prism's measure), averaged over the draws of each evaluation seed."""
    scores = []
    for seed in seeds:
        judge.seed = seed
        scores.append(judge(captions, records).rewards)
    return torch.stack(scores).mean(0)


def caption_utility(judge: CapRLQAReward, captions: list[str], records: list[Record], seeds=(0, 1, 2)) -> float:
    return float(caption_scores(judge, captions, records, seeds).mean())


def has_objects(records: list[Record]) -> bool:
    """Whether object fidelity can be measured: ShapesWorld records keep their scene."""
    return all("objects" in r.meta for r in records)


def sample_records(records: list[Record], n: int, seed: int) -> list[Record]:
    return random.Random(seed).sample(records, min(n, len(records)))
