"""Question answering in ShapesWorld: which objects a caption claims, which option a question's
answer is given only those objects, and the labelled MCQ examples the reader (caption ->
answer) and the visual judge (image -> answer) are trained on.

ShapesWorld's grammar is fixed, so "what a caption alone answers" is computed exactly here;
that exact label is what lets the demo's reward, evaluation and oracles be checked.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from lit_caprl import mcq
from lit_caprl.data import prompts
from lit_caprl.data.schema import Record
from lit_caprl.data.shapes import COLORS, NUMBERS, POSITIONS, SHAPES, SIZES, ShapeObject

_OBJECT_RE = re.compile(
    rf"(?<![\w-])({'|'.join(sorted(POSITIONS, key=len, reverse=True))}) "
    rf"({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b"
)


def parse_caption(text: str) -> list[ShapeObject]:
    """The objects a caption claims (anything outside the grammar is ignored)."""
    return [ShapeObject(*m.groups()) for m in _OBJECT_RE.finditer(text)]


def match_counts(claimed: list[ShapeObject], truth: list[ShapeObject]) -> tuple[int, int, int]:
    """(true claims, number of claims, number of true objects); claims are matched as a multiset."""
    hits = sum((Counter(claimed) & Counter(truth)).values())
    return hits, len(claimed), len(truth)


_QUESTION_RES = {
    "color": re.compile(r"what color is the object at (\S+) \?"),
    "shape": re.compile(r"what shape is the object at (\S+) \?"),
    "position": re.compile(r"where is the (\S+) (\S+) \?"),
    "count": re.compile(r"how many objects are there \?"),
    "existence": re.compile(r"which object is in the image \?"),
    "leaky": re.compile(r"what color is the (\S+) (\S+) \?"),
}


def answer_from_objects(question: str, options: list[str], objects: list[ShapeObject]) -> str | None:
    """The option a perfect reader picks if `objects` were the whole scene, or None if no option fits.

    Applied to the objects a caption claims, this is the label "answering from the caption
    alone" gives, which is what the reader is trained to do.
    """
    by_pos = {o.position: o for o in objects}
    for kind, pattern in _QUESTION_RES.items():
        m = pattern.fullmatch(question)
        if m is None:
            continue
        if kind in ("color", "shape"):
            obj = by_pos.get(m[1])
            value = None if obj is None else getattr(obj, kind)
        elif kind == "position":
            found = [o.position for o in objects if (o.color, o.shape) == (m[1], m[2])]
            value = found[0] if len(found) == 1 else None
        elif kind == "leaky":
            value = m[1]  # stated by the question itself: answerable with no caption at all
        elif kind == "count":
            value = NUMBERS[len(objects) - 1] if 0 < len(objects) <= len(NUMBERS) else None
        else:
            named = {f"{o.color} {o.shape}" for o in objects}
            hits = [opt for opt in options if opt in named]
            value = hits[0] if len(hits) == 1 else None
        return value if value in options else None
    raise ValueError(f"not a ShapesWorld question: {question!r}")


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
            claimed = parse_caption(cap)
            for q in r.questions:
                options = list(q.options)
                rng.shuffle(options)
                value = answer_from_objects(q.question, options, claimed)
                shown = prompts.shown_options(options, answer_format)
                correct = options.index(value) if value is not None else len(options)
                out.append(
                    {
                        "image": None,
                        "prompt": prompts.reader_question(cap, q.question, options, answer_format),
                        "prefill": prompts.answer_prefix(answer_format),
                        "target": mcq.answer_text(shown, correct, answer_format),
                        "options": shown,
                        "correct": correct,
                    }
                )
    return out


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
