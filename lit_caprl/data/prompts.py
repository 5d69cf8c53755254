"""The words the models are asked in: the captioner's prompt and the reader's MCQ prompt.

One function builds the reader's prompt, so reader SFT, the CapRL reward and evaluation
all ask the question in exactly the same words. The "cannot answer" option is always
appended last, as in CapRL, so a caption that omits the asked-about fact earns nothing.
"""

from __future__ import annotations

from lit_caprl.data.schema import LETTERS

DEFAULT_CAPTION_PROMPT = "describe this image in detail ."
CANNOT_ANSWER = "cannot answer from the caption"
INSTRUCTION = (
    "answer the question using only the caption . "
    "if the caption does not tell , choose the option cannot answer from the caption ."
)
ANSWER_PREFIX = "the answer is"
VISUAL_INSTRUCTION = "answer the question about the image ."


def shown_options(options: list[str] | tuple[str, ...]) -> list[str]:
    """The options as the reader sees them: the given order, then "cannot answer"."""
    return [*options, CANNOT_ANSWER]


def reader_question(caption: str, question: str, options: list[str] | tuple[str, ...]) -> str:
    """The user turn: instruction, question, lettered options (with "cannot answer"), then the caption.

    The layout is chosen for small readers: each option's letter directly follows its text
    ("blue B"), so naming the answer and copying the letter after it is one induction step,
    and the caption comes last, so every caption token can already see what is asked."""
    lettered = " , ".join(f"{o} {LETTERS[i]}" for i, o in enumerate(shown_options(options)))
    return f"{INSTRUCTION} question : {question} options : {lettered} . caption : {caption}"


def visual_question(question: str, options: list[str] | tuple[str, ...]) -> str:
    """The prompt of a VLM that sees the image (QA curation's visual pass): no caption and no
    "cannot answer" option, the same option layout as the reader's."""
    lettered = " , ".join(f"{o} {LETTERS[i]}" for i, o in enumerate(options))
    return f"{VISUAL_INSTRUCTION} question : {question} options : {lettered} ."
