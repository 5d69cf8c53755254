"""The words the models are asked in: the captioner's prompt and the MCQ prompts.

One function builds the reader's prompt, so reader SFT, the CapRL reward and evaluation
all ask the question in exactly the same words. The "cannot answer" option is always
appended last, as in CapRL, so a caption that omits the asked-about fact earns nothing.
Options are listed lettered ("A red , B blue") for the `letter` answer format and plain
("red , blue") for `cloze` (see `lit_caprl.mcq`).
"""

from __future__ import annotations

from lit_caprl.data.schema import LETTERS

DEFAULT_CAPTION_PROMPT = "describe this image in detail ."
CANNOT_ANSWER = "cannot answer from the caption"
INSTRUCTION = "answer using only the caption . if it does not tell , answer cannot answer from the caption ."
ANSWER_PREFIX = "the answer is"
VISUAL_INSTRUCTION = "answer the question about the image ."


def shown_options(options: list[str] | tuple[str, ...]) -> list[str]:
    """The options as the reader sees them: the given order, then "cannot answer"."""
    return [*options, CANNOT_ANSWER]


def listing(options: list[str] | tuple[str, ...], answer_format: str) -> str:
    if answer_format == "letter":
        return " , ".join(f"{LETTERS[i]} {o}" for i, o in enumerate(options))
    return " , ".join(options)


def reader_question(
    caption: str, question: str, options: list[str] | tuple[str, ...], answer_format: str = "letter"
) -> str:
    """The user turn: instruction, caption, question, then the options with "cannot answer" last."""
    shown = listing(shown_options(options), answer_format)
    return f"{INSTRUCTION} caption : {caption} question : {question} options : {shown} ."


def visual_question(question: str, options: list[str] | tuple[str, ...], answer_format: str = "letter") -> str:
    """The prompt of a VLM that sees the image (QA curation's visual pass): no caption and no
    "cannot answer" option, the same option layout as the reader's."""
    return f"{VISUAL_INSTRUCTION} question : {question} options : {listing(options, answer_format)} ."
