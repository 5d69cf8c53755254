"""The words the models are asked in: the captioner's prompt and the MCQ prompts.

One function builds the reader's prompt, so reader SFT, the CapRL reward and evaluation
all ask the question in exactly the same words. The "cannot answer" option is always
appended last, as in CapRL, so a caption that omits the asked-about fact earns nothing.
Options are listed lettered ("A red , B blue") for the `letter` answer format and plain
("red , blue") for `cloze` (see `lit_caprl.mcq`). The `caprl` format asks as CapRL's reward
server does (the structure of its prompt, in our words): an instruction to answer from the
caption alone, two worked examples (one answerable, one not), the caption between markers,
the question, options "A) ..." one per line ending in CapRL's "Can not answer based on the
caption", and the answer prefilled up to the letter. It is what a Hub instruct reader such
as Qwen2.5-3B-Instruct expects; the terse `letter` / `cloze` prompts suit word-level tiny readers.
"""

from __future__ import annotations

from lit_caprl.data.schema import LETTERS

DEFAULT_CAPTION_PROMPT = "describe this image in detail ."
CAPRL_CAPTION_PROMPT = "Please describe this image in detail."  # CapRL-QA-75K's policy prompt
CANNOT_ANSWER = "cannot answer from the caption"
INSTRUCTION = "answer using only the caption . if it does not tell , answer cannot answer from the caption ."
ANSWER_PREFIX = "the answer is"
VISUAL_INSTRUCTION = "answer the question about the image ."

CAPRL_CANNOT_ANSWER = "Can not answer based on the caption"
CAPRL_ANSWER_PREFIX = "The answer is"
CAPRL_MAX_OPTIONS = 9  # CapRL's reader answers A-I, "cannot answer" included
CAPRL_INSTRUCTION = (
    "Below is a caption of an image, then a multiple-choice question about the image. Answer the question "
    "using only what the caption says: bring in no outside knowledge and make no assumptions. If the caption "
    f'does not say, choose "{CAPRL_CANNOT_ANSWER}". Reply with the letter of one option.'
)
_EXAMPLE_CAPTION = "A brown dog sleeps on a red sofa beside an open window; the sky outside is grey."
CAPRL_EXAMPLES = (
    f"Example 1\n<caption>\n{_EXAMPLE_CAPTION}\n</caption>\nQuestion: What colour is the sofa?\n"
    f"A) blue\nB) red\nC) green\nD) {CAPRL_CANNOT_ANSWER}\n{CAPRL_ANSWER_PREFIX} B.\n\n"
    f"Example 2\n<caption>\n{_EXAMPLE_CAPTION}\n</caption>\nQuestion: What breed is the dog?\n"
    f"A) poodle\nB) beagle\nC) labrador\nD) {CAPRL_CANNOT_ANSWER}\n{CAPRL_ANSWER_PREFIX} D."
)


def cannot_answer(answer_format: str = "letter") -> str:
    return CAPRL_CANNOT_ANSWER if answer_format == "caprl" else CANNOT_ANSWER


def answer_prefix(answer_format: str = "letter") -> str:
    """What the assistant turn is prefilled with, so the next tokens are the answer."""
    return CAPRL_ANSWER_PREFIX if answer_format == "caprl" else ANSWER_PREFIX


def shown_options(options: list[str] | tuple[str, ...], answer_format: str = "letter") -> list[str]:
    """The options as the reader sees them: the given order, then "cannot answer"."""
    return [*options, cannot_answer(answer_format)]


def listing(options: list[str] | tuple[str, ...], answer_format: str) -> str:
    if answer_format == "caprl":
        return "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
    if answer_format == "letter":
        return " , ".join(f"{LETTERS[i]} {o}" for i, o in enumerate(options))
    return " , ".join(options)


def reader_question(
    caption: str, question: str, options: list[str] | tuple[str, ...], answer_format: str = "letter"
) -> str:
    """The user turn: instruction, caption, question, then the options with "cannot answer" last."""
    shown = listing(shown_options(options, answer_format), answer_format)
    if answer_format == "caprl":
        if len(options) + 1 > CAPRL_MAX_OPTIONS:
            raise ValueError(
                f"the caprl format asks at most {CAPRL_MAX_OPTIONS - 1} options (A-I with "
                f"'cannot answer'); question {question!r} has {len(options)}"
            )
        return (
            f"{CAPRL_INSTRUCTION}\n\n{CAPRL_EXAMPLES}\n\nNow the real one.\n<caption>\n{caption}\n</caption>\n"
            f"Question: {question}\n{shown}"
        )
    return f"{INSTRUCTION} caption : {caption} question : {question} options : {shown} ."


def visual_question(question: str, options: list[str] | tuple[str, ...], answer_format: str = "letter") -> str:
    """The prompt of a VLM that sees the image (QA curation's visual pass): no caption and no
    "cannot answer" option, the same option layout as the reader's."""
    return f"{VISUAL_INSTRUCTION} question : {question} options : {listing(options, answer_format)} ."
