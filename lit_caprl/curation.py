"""CapRL's QA filter: keep a question only if it needs the image.

A VLM answers each MCQ looking at the image (visual accuracy); the text-only reader
answers it from the question alone, with an empty caption (blind accuracy). Both are
averaged over every cyclic rotation of the options, which cancels letter bias. A question
is kept when visual accuracy > tau_v (it is answerable) and blind accuracy < tau_b (it
is not guessable without looking).
"""

from __future__ import annotations

import json
from collections import defaultdict

import torch

from lit_caprl import mcq
from lit_caprl.data import prompts
from lit_caprl.data.schema import LETTERS, MCQ, Record, load_records
from lit_caprl.io import atomic_dir, link_image
from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.loading import load_model


def keep_question(visual: float, blind: float, tau_v: float = 0.75, tau_b: float = 0.25) -> bool:
    return visual > tau_v and blind < tau_b


def _rotations(q: MCQ) -> list[tuple[list[str], int]]:
    """(shown options, index of the right one) for each cyclic rotation of the options."""
    orders = mcq.cyclic_orders(list(range(len(q.options))))
    return [([q.options[j] for j in order], order.index(LETTERS.index(q.answer))) for order in orders]


def rotation_accuracy(
    adapter: VLMAdapter,
    records: list[Record],
    visual: bool,
    answer_format: mcq.AnswerFormat = "letter",
    batch_size: int = 64,
) -> list[list[float]]:
    """Per record, per question: the share of option rotations the model answers right.
    visual: the VLM sees the image; else the reader sees only the question (empty caption)."""
    texts, images, shown, correct, owner = [], [], [], [], []
    for i, r in enumerate(records):
        image = r.load_image() if visual else None
        for k, q in enumerate(r.questions):
            for options, right in _rotations(q):
                if visual:
                    body = prompts.visual_question(q.question, options, answer_format)
                    shown.append(options)
                    text = adapter.chat(body, True, prompts.answer_prefix(answer_format))
                else:
                    text, options_shown = mcq.reader_prompt(adapter, "", q.question, options, answer_format)
                    shown.append(options_shown)
                texts.append(text)
                images.append(image)
                correct.append(right)
                owner.append((i, k))
    adapter.model.eval()
    logits = mcq.option_logits(adapter, texts, shown, answer_format, batch_size, images if visual else None)
    picks = logits.argmax(-1)
    hits: dict[tuple[int, int], list[float]] = defaultdict(list)
    for key, pick, right in zip(owner, picks.tolist(), correct, strict=True):
        hits[key].append(float(pick == right))
    return [[sum(hits[i, k]) / len(hits[i, k]) for k in range(len(r.questions))] for i, r in enumerate(records)]


def curate(
    data: str,
    vlm: str,
    reader: str,
    out: str,
    tau_v: float = 0.75,
    tau_b: float = 0.25,
    answer_format: mcq.AnswerFormat | None = None,
) -> dict:
    """Filter `data`'s MCQs; write the kept records (`out/curated.jsonl`, images linked) and
    `out/stats.json` (counts overall and per question type), atomically. Records left with
    no question are dropped and counted. Each model is asked in `answer_format`, by default
    the one its export records (`mcq.resolve_format`)."""
    records, _ = load_records(data)
    with torch.no_grad():
        visual_format, blind_format = mcq.resolve_format(vlm, answer_format), mcq.resolve_format(reader, answer_format)
        visual = rotation_accuracy(load_model(vlm), records, visual=True, answer_format=visual_format)
        blind = rotation_accuracy(load_model(reader), records, visual=False, answer_format=blind_format)
    by_type: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "kept": 0, "visual": 0.0, "blind": 0.0})
    kept_records, dropped = [], 0
    for r, vis, bl in zip(records, visual, blind, strict=True):
        keep = [q for q, v, b in zip(r.questions, vis, bl, strict=True) if keep_question(v, b, tau_v, tau_b)]
        for q, v, b in zip(r.questions, vis, bl, strict=True):
            t = by_type[q.type or "untyped"]
            t["n"] += 1
            t["kept"] += keep_question(v, b, tau_v, tau_b)
            t["visual"] += v
            t["blind"] += b
        if keep:
            kept_records.append((r, keep, vis, bl))
        else:
            dropped += 1
    for t in by_type.values():  # sums -> mean accuracies, so a judge that fails shows which side
        t["visual"], t["blind"] = round(t["visual"] / t["n"], 4), round(t["blind"] / t["n"], 4)
    stats = {
        "data": data,
        "vlm": vlm,
        "reader": reader,
        "tau_v": tau_v,
        "tau_b": tau_b,
        "questions": sum(t["n"] for t in by_type.values()),
        "kept": sum(t["kept"] for t in by_type.values()),
        "records": len(records),
        "records_dropped": dropped,
        "by_type": dict(by_type),
    }
    with atomic_dir(out) as tmp:
        with open(tmp / "curated.jsonl", "w") as f:
            for r, keep, vis, bl in kept_records:
                row = r.to_json(link_image(r, tmp)) | {
                    "questions": [q.to_json() for q in keep],
                    "meta": {**r.meta, "curation": {"visual": vis, "blind": bl}},
                }
                f.write(json.dumps(row) + "\n")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))
    return stats
