"""The data formats CapRL's users arrive with, read row by row into our record schema.

- `caprl-qa`: CapRL-QA-75K parquet. `id`; `image` = {bytes, path}; `prompt` (chat messages);
  `data_source`; `reward_model.ground_truth` = [{question, choices, answer}], choices
  labelled ("A) 北京市").
- `verl`: CapRL++ rows. Images under `images` (a list of {bytes, path}); `reward_model:
  {style, ground_truth}`; `extra_info: {split, index, ...}`; often no `id`. A ground truth
  is a dict with labelled or unlabelled choices, or a `[question_with_options, letter]` pair
  whose options are lines ("\\n   - A) opt") of the question text.
- `captions`: image + `caption` (or `captions`, or a `conversations`/`messages` chat whose
  last assistant turn is the caption), e.g. CapRL-2M for SFT.
- `prism`: one benchmark question per row, `{image, prompt, answer}` (options as lines of
  `prompt`, or an `options` list, or columns A, B, ...). Rows of one image become one record
  with several questions (`image_id`, else the image's path, else its hash, names it).

`convert` is a pure function from one row to one record dict whose `image` is still a
reference (bytes or a path); `lit_caprl.data.importer` writes the images and the JSONL.
The rows come from `rows.read_rows`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lit_caprl.data.rows import BadRow
from lit_caprl.data.schema import LETTERS

Format = Literal["caprl-qa", "verl", "captions", "prism"]
FORMATS = get_args(Format)


@dataclass
class ImageRef:
    """Where a record's image comes from: encoded bytes, or a file."""

    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if not self.path.is_file():
            raise BadRow("image", f"image file {self.path} does not exist")
        return self.path.read_bytes()


@dataclass
class Converted:
    id: str | None  # None: named later from the image's hash
    image: ImageRef
    questions: list[dict] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


_LABEL = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])\s*[.)．、:：])\s*")
_OPTION_LINE = re.compile(r"^\s*(?:[-*•]\s*)?(?:\(([A-Z])\)|([A-Z])\s*[.)．、:：])\s*(.*?)\s*$")
_OPTIONS_HEADER = re.compile(r"^\s*(options|choices)\s*[:：]?\s*$", re.IGNORECASE)


def strip_labels(choices: list[str]) -> list[str]:
    """Choices without their "A) " / "A. " / "(A) " labels when every choice carries one, in
    order A, B, C...; otherwise unchanged (a lone "A. Lincoln" is an answer, not a label)."""
    found = [_LABEL.match(c) for c in choices]
    if all(found) and [m[1] or m[2] for m in found] == list(LETTERS[: len(choices)]):
        return [c[m.end() :].strip() for c, m in zip(choices, found, strict=True)]
    return [c.strip() for c in choices]


def answer_letter(answer: object, options: list[str], where: str) -> str:
    """The answer as a letter of `options`: "C", "c", "(C)", "C) 惠州市" or the option's own text."""
    if isinstance(answer, str):
        text = answer.strip()
        m = re.fullmatch(r"\(?([A-Za-z])\)?\s*[.)．、:：]?(?:\s+.*)?", text, re.DOTALL)
        if m and m[1].upper() in LETTERS[: len(options)] and (len(text) <= 3 or _LABEL.match(text)):
            return m[1].upper()
        if text in options:
            return LETTERS[options.index(text)]
    valid = ", ".join(LETTERS[: len(options)])
    raise BadRow(f"{where}.answer", f"{answer!r} is not among the option letters {valid}")


def parse_question_text(text: str, where: str) -> tuple[str, list[str], str]:
    """(question, options, trailing text) from a question whose options are lines
    ("\\n   - A) opt", "A. opt", "(A) opt"), in order from A."""
    lines = text.split("\n")
    first = next((i for i, ln in enumerate(lines) if (m := _OPTION_LINE.match(ln)) and (m[1] or m[2]) == "A"), None)
    if first is None:
        raise BadRow(where, "no option lines (like '\\n - A) ...') in the question text")
    options, end = [], first
    while end < len(lines) and (m := _OPTION_LINE.match(lines[end])) and (m[1] or m[2]) == LETTERS[len(options)]:
        options.append(m[3])
        end += 1
    head = [ln for ln in lines[:first] if ln.strip()]
    if head and _OPTIONS_HEADER.match(head[-1]):
        head.pop()
    question = "\n".join(ln.strip() for ln in head).strip()
    if not question:
        raise BadRow(where, "no question text before the options")
    if len(options) < 2 or not all(options):
        raise BadRow(where, f"needs at least 2 non-empty options, found {options}")
    return question, options, "\n".join(lines[end:]).strip()


def mcq_from_dict(item: dict, where: str) -> dict:
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BadRow(f"{where}.question", "must be a non-empty string")
    choices = item.get("choices", item.get("options"))
    if not isinstance(choices, list) or not choices:
        raise BadRow(f"{where}.choices", "must be a non-empty list of strings")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise BadRow(f"{where}.choices", f"every choice must be a non-empty string, got {choices}")
    if len(choices) < 2:
        raise BadRow(f"{where}.choices", f"needs at least 2 choices, got {choices}")
    options = strip_labels(choices)
    if len(set(options)) != len(options):
        raise BadRow(f"{where}.choices", f"duplicate choices {options}")
    return {
        "question": question.strip(),
        "options": options,
        "answer": answer_letter(item.get("answer"), options, where),
    }


def mcq_from_pair(item: list, where: str) -> dict:
    """A verl `[question_with_options, letter]` pair."""
    if len(item) != 2 or not isinstance(item[0], str):
        raise BadRow(where, f"expected [question_with_options, letter], got {str(item)[:80]!r}")
    question, options, _ = parse_question_text(item[0], where)
    return {"question": question, "options": options, "answer": answer_letter(item[1], options, where)}


def ground_truth_mcqs(truth: object, where: str) -> list[dict]:
    """CapRL / verl `reward_model.ground_truth` in any of its shapes, as schema MCQs."""
    if isinstance(truth, str):
        try:
            truth = json.loads(truth)
        except json.JSONDecodeError as e:
            raise BadRow(where, f"a string that is not JSON ({e.msg})") from e
    if isinstance(truth, dict):
        truth = [truth]
    if not isinstance(truth, list) or not truth:
        raise BadRow(where, "must be a non-empty list of questions")
    if len(truth) == 2 and isinstance(truth[0], str) and isinstance(truth[1], str):
        truth = [truth]  # one bare [question_with_options, letter] pair
    out = []
    for i, item in enumerate(truth):
        at = f"{where}[{i}]"
        if isinstance(item, dict):
            out.append(mcq_from_dict(item, at))
        elif isinstance(item, list | tuple):
            out.append(mcq_from_pair(list(item), at))
        else:
            raise BadRow(at, f"expected a question object or a [question, letter] pair, got {type(item).__name__}")
    return out


def image_ref(value: object, where: str, base: Path) -> ImageRef:
    """An image given as {bytes, path}, encoded bytes, or a path (relative to `base`)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise BadRow(where, f"expected exactly one image, got {len(value)}")
        return image_ref(value[0], f"{where}[0]", base)
    if isinstance(value, dict):
        if value.get("bytes"):
            return ImageRef(data=bytes(value["bytes"]))
        if value.get("path"):
            return image_ref(value["path"], f"{where}.path", base)
        raise BadRow(where, "neither bytes nor path")
    if isinstance(value, bytes | bytearray):
        return ImageRef(data=bytes(value))
    if isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
        return ImageRef(path=path if path.is_absolute() else base / path)
    raise BadRow(where, "missing (expected {bytes, path}, bytes or a path)")


def _image_field(row: dict) -> tuple[str, object]:
    for key in ("image", "images", "image_path"):
        if row.get(key) is not None:
            return key, row[key]
    return "image", None


def _prompt_text(prompt: object) -> str | None:
    """The user's words from a chat prompt ([{role, content}]) or a string, `<image>` removed."""
    if isinstance(prompt, list):
        prompt = next((m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"), None)
    return prompt.replace("<image>", "").strip() if isinstance(prompt, str) else None


def _source_meta(row: dict, keep: tuple[str, ...]) -> dict:
    return {k: row[k] for k in keep if row.get(k) is not None}


def _row_id(row: dict) -> str | None:
    """The row's own id, else verl's `extra_info.index`; None: name it by its image's hash."""
    if row.get("id") is not None and str(row["id"]).strip():
        return str(row["id"])
    extra = row.get("extra_info")
    if isinstance(extra, dict) and extra.get("index") is not None:
        return str(extra["index"])
    return None


# ---- one row -> one record -----------------------------------------------------------------
def convert(row: object, fmt: Format, base: Path) -> Converted:
    """One row in format `fmt` as a record; image paths are relative to `base`. Raises `BadRow`."""
    if not isinstance(row, dict):
        raise BadRow("record", f"expected an object, got {type(row).__name__}")
    key, value = _image_field(row)
    image = image_ref(value, key, base)
    if fmt in ("caprl-qa", "verl"):
        reward_model = row.get("reward_model")
        if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
            raise BadRow("reward_model.ground_truth", "missing")
        questions = ground_truth_mcqs(reward_model["ground_truth"], "reward_model.ground_truth")
        meta = _source_meta(row, ("data_source", "extra_info")) | {"prompt": _prompt_text(row.get("prompt"))}
        if reward_model.get("style") is not None:
            meta["reward_style"] = reward_model["style"]
        return Converted(_row_id(row), image, questions, meta={"source": meta})
    if fmt == "captions":
        return Converted(_row_id(row), image, captions=_captions(row), meta={"source": _source_meta(row, ("source",))})
    if fmt == "prism":
        question = _prism_question(row)
        rid = row.get("image_id")
        if rid is None and image.path is not None:
            rid = image.path.with_suffix("").name
        kept = ("prompt", "answer", "index", "category", "l2-category", "split", "source")
        return Converted(
            None if rid is None else str(rid),
            image,
            [question],
            meta={"source": {"questions": [_source_meta(row, kept)]}},
        )
    raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")


def _captions(row: dict) -> list[str]:
    if isinstance(row.get("caption"), str):
        caps = [row["caption"]]
    elif isinstance(row.get("captions"), list):
        caps = row["captions"]
    else:
        chat = row.get("conversations", row.get("messages"))
        caps = []
        if isinstance(chat, list):
            said = [
                m.get("value", m.get("content"))
                for m in chat
                if isinstance(m, dict) and m.get("from", m.get("role")) in ("gpt", "assistant")
            ]
            caps = said[-1:]
    if not all(isinstance(c, str) and c.strip() for c in caps):
        raise BadRow("captions", "every caption must be a non-empty string")
    if not caps:
        raise BadRow("caption", "missing (caption, captions, or a conversations/messages assistant turn)")
    return [c.strip() for c in caps]


def _prism_question(row: dict) -> dict:
    letters = [c for c in LETTERS if isinstance(row.get(c), str) and row[c].strip()]
    if isinstance(row.get("options"), list) or isinstance(row.get("choices"), list) or letters:
        question = row.get("question", row.get("prompt"))
        options = row.get("options", row.get("choices")) or [row[c] for c in letters]
        return mcq_from_dict({"question": question, "choices": options, "answer": row.get("answer")}, "question")
    prompt = row.get("prompt", row.get("question"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRow("prompt", "missing")
    try:
        question, options, _ = parse_question_text(prompt, "prompt")
    except BadRow as e:
        raise BadRow("prompt", f"{e.message}; open-ended benchmarks are not supported, only multiple choice") from e
    return {"question": question, "options": options, "answer": answer_letter(row.get("answer"), options, "prompt")}


def image_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]
