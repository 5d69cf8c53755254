"""ShapesWorld: a seeded synthetic world of coloured shapes on a 3x3 grid.

The world is built so that tiny models learn it in minutes on a CPU: each object fills
one 28x28 grid cell, which is exactly one merged image token of Qwen2.5-VL (patch 14,
merge 2) and one patch of the tiny LLaVA tower, and every word of every caption and
question is a single token of the word-level tokenizer.

Everything here is a pure function of a `random.Random`, so the same seed gives the
same scenes, the same PNG bytes and the same questions.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from lit_caprl.io import atomic_dir

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (220, 40, 40), "green": (30, 170, 60), "blue": (40, 80, 230), "yellow": (235, 200, 20)}
SIZES = ("small", "big")
POSITIONS = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)
GRID = 3
CELL = 28
IMAGE_SIZE = GRID * CELL
NUMBERS = ("one", "two", "three", "four", "five", "six")
MAX_OBJECTS = 5


@dataclass(frozen=True)
class ShapeObject:
    """One object; `position` is one of POSITIONS (one grid cell, at most one object each)."""

    position: str
    size: str
    color: str
    shape: str

    def phrase(self) -> str:
        return f"{self.position} {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Question:
    """A multiple-choice question: four options and the letter of the right one."""

    question: str
    options: tuple[str, ...]
    answer: str
    type: str

    def to_json(self) -> dict:
        return {"question": self.question, "options": list(self.options), "answer": self.answer, "type": self.type}


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 4) -> list[ShapeObject]:
    """Objects in distinct cells, sorted in reading order (the order captions use)."""
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}, {max_objects}")
    n = rng.randint(min_objects, max_objects)
    cells = sorted(rng.sample(range(len(POSITIONS)), n))
    return [ShapeObject(POSITIONS[c], rng.choice(SIZES), rng.choice(list(COLORS)), rng.choice(SHAPES)) for c in cells]


def render(objects: list[ShapeObject]) -> Image.Image:
    """Draw the scene on an IMAGE_SIZE x IMAGE_SIZE canvas.

    Qwen2-VL's vision tower has only relative (rotary) positions, so without help a tiny
    model cannot tell which image token is "top-left". Each cell's background grey is
    distinct, which puts the cell's identity into its token's content."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i in range(len(POSITIONS)):
        row, col = divmod(i, GRID)
        level = 250 - 12 * i  # a faint grey per cell, so an image token's content says where it is
        draw.rectangle((col * CELL, row * CELL, col * CELL + CELL - 1, row * CELL + CELL - 1), fill=(level,) * 3)
    for obj in objects:
        row, col = divmod(POSITIONS.index(obj.position), GRID)
        cx, cy = col * CELL + CELL // 2, row * CELL + CELL // 2
        r = 12 if obj.size == "big" else 8
        # A black outline draws every shape's mask the same way in all colour channels, so a
        # tiny vision tower reads shape and size linearly whatever the object's colour.
        style = dict(fill=COLORS[obj.color], outline=(0, 0, 0), width=3)
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), **style)
        elif obj.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), **style)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], **style)
        else:
            w = max(2, r // 3)
            arm = [
                (-w, -r),
                (w, -r),
                (w, -w),
                (r, -w),
                (r, w),
                (w, w),
                (w, r),
                (-w, r),
                (-w, w),
                (-r, w),
                (-r, -w),
                (-w, -w),
            ]
            draw.polygon([(cx + x, cy + y) for x, y in arm], **style)
    return image


def caption(objects: list[ShapeObject]) -> str:
    """The fixed grammar: one four-word sentence per object, in reading order ("top-left big red
    circle ."). The position comes first, so each sentence names the grid cell (one image token)
    before describing what is in it. No filler words ("at ... is a"): a tiny reader binds
    attributes to their position faster when they are closer."""
    return " ".join(f"{o.phrase()} ." for o in sorted(objects, key=lambda o: POSITIONS.index(o.position)))


def _letter(options: list[str], answer: str) -> str:
    return "ABCD"[options.index(answer)]


def _choose(rng: random.Random, answer: str, pool: list[str]) -> list[str]:
    options = [answer] + rng.sample([p for p in pool if p != answer], 3)
    rng.shuffle(options)
    return options


def make_questions(rng: random.Random, objects: list[ShapeObject], leaky: bool = False) -> list[Question]:
    """About five MCQs per scene: colour, shape, position, count and existence; with `leaky`,
    also one whose answer is in its own text ("what color is the red circle ?"), the kind of
    question CapRL's curation removes because a reader answers it without any caption."""
    out: list[Question] = []
    a, b = rng.choice(objects), rng.choice(objects)
    opts = _choose(rng, a.color, list(COLORS))
    out.append(Question(f"what color is the object at {a.position} ?", tuple(opts), _letter(opts, a.color), "color"))
    opts = _choose(rng, b.shape, list(SHAPES))
    out.append(Question(f"what shape is the object at {b.position} ?", tuple(opts), _letter(opts, b.shape), "shape"))
    kinds = Counter((o.color, o.shape) for o in objects)
    unique = [o for o in objects if kinds[(o.color, o.shape)] == 1]
    if unique:
        c = rng.choice(unique)
        opts = _choose(rng, c.position, list(POSITIONS))
        q = f"where is the {c.color} {c.shape} ?"
        out.append(Question(q, tuple(opts), _letter(opts, c.position), "position"))
    count = NUMBERS[len(objects) - 1]
    opts = _choose(rng, count, list(NUMBERS))
    out.append(Question("how many objects are there ?", tuple(opts), _letter(opts, count), "count"))
    absent = [f"{c} {s}" for c in COLORS for s in SHAPES if (c, s) not in kinds]
    present = rng.choice(sorted(f"{c} {s}" for c, s in kinds))
    opts = [present] + rng.sample(absent, 3)
    rng.shuffle(opts)
    out.append(Question("which object is in the image ?", tuple(opts), _letter(opts, present), "existence"))
    if leaky:
        d = rng.choice(objects)
        opts = _choose(rng, d.color, list(COLORS))
        out.append(Question(f"what color is the {d.color} {d.shape} ?", tuple(opts), _letter(opts, d.color), "leaky"))
    return out


def partial_captions(rng: random.Random, objects: list[ShapeObject], n: int) -> list[str]:
    """`n` captions that each mention a random non-empty subset of the objects (size uniform
    in 1..all): with smaller subsets the captioner sees too few objects per caption to learn shapes."""
    out = []
    for _ in range(n):
        k = rng.randint(1, len(objects))
        out.append(caption(rng.sample(objects, k)))
    return out


def corrupted_caption(rng: random.Random, objects: list[ShapeObject]) -> str:
    """The gold caption with one mistake a captioner makes: an object left out, one attribute
    wrong (colour, shape or size), or an object that is not there. A judge that reads only text
    tells the first apart by length and the rest not at all: what a reward without eyes learns."""
    objects = list(objects)
    i = rng.randrange(len(objects))
    kinds = ["swap"] + (["omit"] if len(objects) > 1 else []) + (["add"] if len(objects) < len(POSITIONS) else [])
    kind = rng.choice(kinds)
    if kind == "omit":
        del objects[i]
    elif kind == "add":
        free = [p for p in POSITIONS if p not in {o.position for o in objects}]
        objects.append(ShapeObject(rng.choice(free), rng.choice(SIZES), rng.choice(list(COLORS)), rng.choice(SHAPES)))
    else:
        field, values = rng.choice([("color", list(COLORS)), ("shape", SHAPES), ("size", SIZES)])
        o = objects[i]
        other = rng.choice([v for v in values if v != getattr(o, field)])
        objects[i] = ShapeObject(**{**asdict(o), field: other})
    return caption(objects)


SHORT_LENGTHS = (0.55, 0.3, 0.1, 0.05)  # P(a short caption names 1, 2, 3, 4 objects)


def short_captions(rng: random.Random, objects: list[ShapeObject], n: int) -> list[str]:
    """`n` captions as a base VLM's first caption: the most salient objects only (big before
    small, then reading order), usually one or two. Greedy decoding of a captioner trained on
    them names one object; sampling sometimes names more, which is what RL has to discover pays."""
    salient = sorted(objects, key=lambda o: (o.size != "big", POSITIONS.index(o.position)))
    return [caption(salient[: rng.choices(range(1, 5), SHORT_LENGTHS)[0]]) for _ in range(n)]


def make_scene_record(
    rng: random.Random, idx: int, min_objects: int, max_objects: int, n_partial: int = 2, leaky: float = 0.0
) -> tuple[dict, Image.Image]:
    """One JSONL record (image path filled in by the writer) and its image; a `leaky` share of
    records also get a question answerable from its own text."""
    objects = sample_scene(rng, min_objects, max_objects)
    with_leak = leaky > 0 and rng.random() < leaky  # draws nothing when off: default data stays byte-identical
    record = {
        "id": f"shapes-{idx:06d}",
        "image": f"images/{idx:06d}.png",
        "captions": [caption(objects)],
        "questions": [q.to_json() for q in make_questions(rng, objects, with_leak)],
        "meta": {
            "level": len(objects),
            "objects": [asdict(o) for o in objects],
            "partial_captions": partial_captions(rng, objects, n_partial),
            "short_captions": short_captions(rng, objects, n_partial),
        },
    }
    return record, render(objects)


def vocabulary() -> list[str]:
    """Every word ShapesWorld captions and questions use (all question kinds, leaky included)."""
    words = set(SHAPES) | set(COLORS) | set(SIZES) | set(POSITIONS) | set(NUMBERS)
    scene = [ShapeObject("top", "big", "red", "circle"), ShapeObject("center", "small", "blue", "square")]
    words |= set(caption(scene).split())
    for q in make_questions(random.Random(0), scene, leaky=True):
        words |= set(q.question.split())
    return sorted(words)


def write_dataset(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int,
    min_objects: int = 1,
    max_objects: int = 4,
    leaky: float = 0.0,
) -> Path:
    """Write `train.jsonl`, `val.jsonl` and `images/` under `out_dir`, atomically."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        start = 0
        for split, n in (("train", n_train), ("val", n_val)):
            rng = random.Random(f"shapes-{seed}-{split}")
            with open(tmp / f"{split}.jsonl", "w") as f:
                for idx in range(start, start + n):
                    record, image = make_scene_record(rng, idx, min_objects, max_objects, leaky=leaky)
                    image.save(tmp / record["image"], format="PNG")
                    f.write(json.dumps(record) + "\n")
            start += n
    return Path(out_dir)
