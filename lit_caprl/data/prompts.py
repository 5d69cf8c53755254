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


def shown_options(options: list[str] | tuple[str, ...]) -> list[str]:
    """The options as the reader sees them: the given order, then "cannot answer"."""
    return [*options, CANNOT_ANSWER]


def reader_question(caption: str, question: str, options: list[str] | tuple[str, ...]) -> str:
    """The user turn: instruction, caption, question and lettered options (with "cannot answer")."""
    lettered = " ".join(f"{LETTERS[i]} : {o} ." for i, o in enumerate(shown_options(options)))
    return f"{INSTRUCTION} caption : {caption} question : {question} options : {lettered}"
