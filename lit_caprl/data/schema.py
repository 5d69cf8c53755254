"""The one data format: JSONL, one record per image, images in a folder beside it.

    {"id": "img-1",                       # unique within the file
     "image": "images/1.png",             # relative to the JSONL's folder, never outside it
     "captions": ["a big red circle ..."],   # optional, non-empty strings (SFT targets, references)
     "questions": [                       # optional (SFT on captions needs none; RL needs some)
        {"question": "what color ...?", "options": ["red", "blue", "green", "yellow"], "answer": "A",
         "type": "color"}],               # `type` is optional
     "chosen": "...", "rejected": "...",  # optional, together: a preference pair (DPO)
     "meta": {...}}                       # optional, free-form (ShapesWorld keeps its scene here;
                                          # mined pairs keep their rewards and policy here)

`answer` is the letter of the right option (A = first). The reader's extra
"cannot answer" option is added at prompt time, never stored.

Every record is validated on load; a bad one raises `DataError` naming file, line and
field, or, with `on_bad_record="skip"`, is counted and reported, never silently dropped.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from lit_caprl.data.images import open_rgb
from lit_caprl.errors import UserError

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    field: str
    message: str
    unit: str = "line"  # "row" for parquet / JSON inputs

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}: row {self.line}"
        return f"{where}: {self.field}: {self.message}"


class DataError(UserError, ValueError):
    """A record that cannot be used; the message names file, line and field."""

    def __init__(self, problems: list[Problem], hint: str = ""):
        self.problems = problems
        super().__init__("\n".join([*(str(p) for p in problems), *([hint] if hint else [])]))


@dataclass(frozen=True)
class MCQ:
    question: str
    options: tuple[str, ...]
    answer: str
    type: str = ""  # optional label (ShapesWorld: color, shape, ...), kept for per-type statistics

    @property
    def answer_text(self) -> str:
        return self.options[LETTERS.index(self.answer)]

    def to_json(self) -> dict:
        out = {"question": self.question, "options": list(self.options), "answer": self.answer}
        return out | ({"type": self.type} if self.type else {})


@dataclass(frozen=True)
class Record:
    id: str
    image: Path
    questions: tuple[MCQ, ...]
    captions: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False)
    source: str = ""
    chosen: str | None = None
    rejected: str | None = None

    def to_json(self, image: str) -> dict:
        """The record as a JSONL row, its image at `image` (relative to the row's file): the one
        serializer for derived data sets (mined pairs, curated questions)."""
        row = {
            "id": self.id,
            "image": image,
            "questions": [q.to_json() for q in self.questions],
            "captions": list(self.captions),
            "meta": self.meta,
        }
        if self.chosen is not None:
            row |= {"chosen": self.chosen, "rejected": self.rejected}
        return row

    def load_image(self) -> Image.Image:
        """The image as upright RGB (see `images.to_rgb`); a corrupt file names this record."""
        try:
            return open_rgb(self.image)
        except Exception as e:  # PIL raises many types for corrupt files
            raise ValueError(f"{self.source}: record {self.id!r}: image {self.image} cannot be decoded ({e})") from e


def _nonempty_str(x: object) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _check_image(value: object, root: Path) -> str | None:
    if not _nonempty_str(value):
        return "must be a non-empty string path"
    rel = Path(value)
    if rel.is_absolute():
        return f"absolute path {value!r}: image paths are relative to the data file's folder"
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        return f"{value!r} points outside the data root {root}"
    if not path.is_file():
        return f"image file {path} does not exist"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for corrupt files
        return f"image file {path} is not a readable image ({err})"
    return None


def _check_questions(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return [("questions", "must be a list")]
    errs = []
    for i, q in enumerate(value):
        where = f"questions[{i}]"
        if not isinstance(q, dict):
            errs.append((where, "must be an object with question, options, answer"))
            continue
        if not _nonempty_str(q.get("question")):
            errs.append((f"{where}.question", "must be a non-empty string"))
        opts = q.get("options")
        if not isinstance(opts, list) or len(opts) < 2 or not all(_nonempty_str(o) for o in opts):
            errs.append((f"{where}.options", "must be a list of at least 2 non-empty strings"))
            continue
        if len(opts) > len(LETTERS) - 1:
            errs.append((f"{where}.options", f"at most {len(LETTERS) - 1} options"))
        if len(set(opts)) != len(opts):
            dup = sorted({o for o in opts if opts.count(o) > 1})
            errs.append((f"{where}.options", f"duplicate options {dup}"))
        ans = q.get("answer")
        valid = LETTERS[: len(opts)]
        if not (isinstance(ans, str) and len(ans) == 1 and ans in valid):
            errs.append((f"{where}.answer", f"{ans!r} is not among the option letters {', '.join(valid)}"))
    return errs


def validate(obj: object, root: Path) -> list[tuple[str, str]]:
    """(field, message) for each problem of one parsed record."""
    if not isinstance(obj, dict):
        return [("record", "must be a JSON object")]
    errs = []
    if not _nonempty_str(obj.get("id")):
        errs.append(("id", "must be a non-empty string"))
    if (msg := _check_image(obj.get("image"), root)) is not None:
        errs.append(("image", msg))
    caps = obj.get("captions", [])
    if not isinstance(caps, list):
        errs.append(("captions", "must be a list of strings"))
    else:
        errs += [(f"captions[{i}]", "empty caption") for i, c in enumerate(caps) if not _nonempty_str(c)]
    errs += _check_questions(obj.get("questions", []))
    if "chosen" in obj or "rejected" in obj:  # rejected may be empty: a policy can write nothing
        if not _nonempty_str(obj.get("chosen")):
            errs.append(("chosen", "a preference pair needs a non-empty chosen string"))
        if not isinstance(obj.get("rejected"), str):
            errs.append(("rejected", "a preference pair needs a rejected string"))
        elif obj["rejected"] == obj.get("chosen"):
            errs.append(("rejected", "equals chosen"))
    if not isinstance(obj.get("meta", {}), dict):
        errs.append(("meta", "must be an object"))
    return errs


def _to_record(obj: dict, root: Path, source: str) -> Record:
    questions = obj.get("questions", [])
    qs = tuple(MCQ(q["question"], tuple(q["options"]), q["answer"], q.get("type", "")) for q in questions)
    return Record(
        obj["id"],
        (root / obj["image"]).resolve(),
        qs,
        tuple(obj.get("captions", [])),
        obj.get("meta", {}),
        source,
        obj.get("chosen"),
        obj.get("rejected"),
    )


def scan(path: str | Path) -> tuple[list[Record], list[Problem]]:
    """Parse and validate a whole file: the good records and every problem found."""
    path = Path(path)
    if not path.is_file():
        return [], [Problem(path, 0, "file", "does not exist")]
    root = path.parent
    records, problems, seen = [], [], {}
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last record
    if not lines:
        return [], [Problem(path, 0, "file", "is empty")]
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(Problem(path, n, "record", f"not UTF-8 (byte {err.start} of the line)"))
            continue
        if not line.strip():
            problems.append(Problem(path, n, "record", "empty line"))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(Problem(path, n, "record", f"malformed JSON ({err.msg} at column {err.colno})"))
            continue
        errs = validate(obj, root)
        rid = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(rid, str) and rid in seen:
            errs.append(("id", f"duplicate id {rid!r} (first at line {seen[rid]})"))
        if errs:
            problems += [Problem(path, n, f, m) for f, m in errs]
            continue
        seen[rid] = n
        records.append(_to_record(obj, root, f"{path}:{n}"))
    return records, problems


def load_records(
    path: str | Path, on_bad_record: Literal["error", "skip"] = "error"
) -> tuple[list[Record], list[Problem]]:
    """Load a JSONL file. Raises `DataError` on any problem unless `on_bad_record="skip"`,
    in which case the bad records are left out and their problems returned for reporting."""
    records, problems = scan(path)
    if problems and on_bad_record == "error":
        raise DataError(problems)
    if not records:
        raise DataError(problems or [Problem(Path(path), 0, "file", "contains no records")])
    return records, problems
