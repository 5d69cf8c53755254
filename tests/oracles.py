"""Readers that know the answer, for tests of the reward and the evaluation: stand-ins for
`mcq.option_logits` (patch it), so the code under test maps their picks back to the answer key."""

import torch

from lit_caprl.data import shapes_qa


def ideal_option_logits(adapter, texts, options, answer_format, *args, **kwargs):
    """A reader that answers from the caption alone, perfectly: the ShapesWorld grammar's
    objects in the caption answer the question, else "cannot answer" (the last option)."""
    rows = []
    for text, shown in zip(texts, options, strict=True):
        caption = text.split(" caption : ")[1].split(" question : ")[0]
        question = text.split(" question : ")[1].split(" options : ")[0]
        value = shapes_qa.answer_from_objects(question, shown[:-1], shapes_qa.parse_caption(caption))
        rows.append(
            [10.0 if (o == value if value is not None else i == len(shown) - 1) else 0.0 for i, o in enumerate(shown)]
        )
    return torch.tensor(rows)
