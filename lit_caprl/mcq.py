"""How a language model answers a multiple-choice question, in one of two formulations.

- `letter` (multiple-choice formulation): the options are lettered and the model names a
  letter, in a terse prompt. Large readers such as Qwen2.5-3B-Instruct handle it well.
- `caprl`: `letter` asked in CapRL's own prompt (instruction, two worked examples, options
  "A) ..." one per line; see `data/prompts.py`); a sampled reply's first letter A-I is its answer.
- `cloze` (cloze formulation, as in lm-eval-harness and OLMES): the model writes the answer
  itself, and each option is scored by the likelihood of its text (plus end of text) after
  the prompt. Small models answer in this format long before they learn to map an answer
  to its letter: on ShapesWorld a tiny reader scores at chance with letters after minutes
  of training, and near-perfectly on one-object scenes within 30 s in cloze format.

The reward, reader evaluation and QA curation all score options through `option_logits`,
so every consumer of a reader asks it the same way it was trained. A model trained to answer
MCQs records its format in its export (`lit_caprl.json`, written by `HFExport`), and
`resolve_format` makes every consumer ask in it: a reader asked in the other format scores
near chance, and nothing else would say so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

from lit_caprl.data import prompts
from lit_caprl.data.schema import LETTERS
from lit_caprl.models import text_scorer
from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.batches import PromptBatch
from lit_caprl.models.text_scorer import TextCache

AnswerFormat = Literal["letter", "cloze", "caprl"]
FORMATS = get_args(AnswerFormat)
LETTER_FORMATS = ("letter", "caprl")  # answered by naming a letter
EXPORT_RECORD = "lit_caprl.json"  # beside an export's weights: {"answer_format": ...}


def check_format(answer_format: str) -> None:
    if answer_format not in FORMATS:
        raise ValueError(f"answer_format must be one of {FORMATS}, got {answer_format!r}")


def recorded_format(model: str | Path) -> AnswerFormat | None:
    """The answer format `model`'s export records (see `EXPORT_RECORD`), or None: a Hub id, a
    checkpoint, or an export of a model that was never taught a format."""
    path = Path(model) / EXPORT_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}")
    answer_format = record.get("answer_format")
    if answer_format is not None and answer_format not in FORMATS:
        raise ValueError(f"{path}: field answer_format must be one of {FORMATS}, got {answer_format!r}")
    return answer_format


def resolve_format(model: str | Path, answer_format: AnswerFormat | None = None) -> AnswerFormat:
    """The format to ask `model` in: `answer_format` if given, else the one its export records,
    else "letter" (CapRL's, how an instruct model from the Hub is asked). Asking a model in
    another format than the one it records is an error."""
    recorded = recorded_format(model)
    if answer_format is None:
        return recorded or "letter"
    check_format(answer_format)
    if recorded is not None and answer_format != recorded:
        raise ValueError(
            f"{model} was trained to answer in the {recorded!r} format ({Path(model) / EXPORT_RECORD}) "
            f"but is asked in {answer_format!r}; set answer_format to {recorded!r} or leave it out"
        )
    return answer_format


def cyclic_orders(order: list[int]) -> list[list[int]]:
    """Every cyclic rotation of an option order (indices into a question's options): each option
    is shown once in each position, which cancels a reader's bias toward particular letters.
    Used by the reward (`rotations=True`) and QA curation."""
    return [order[r:] + order[:r] for r in range(len(order))]


def answer_text(options: list[str], correct: int, answer_format: AnswerFormat) -> str:
    """What the model is trained to write after the answer prefix."""
    return LETTERS[correct] if answer_format in LETTER_FORMATS else options[correct]


def reader_prompt(
    adapter: VLMAdapter, caption: str, question: str, options: list[str], answer_format: AnswerFormat
) -> tuple[str, list[str]]:
    """The one way a reader is asked an MCQ (reward, evaluation, curation): the rendered prompt,
    ending in the answer prefix, and the options as shown ("cannot answer" last)."""
    body = prompts.reader_question(caption, question, options, answer_format)
    text = adapter.chat(body, False, prompts.answer_prefix(answer_format))
    return text, prompts.shown_options(options, answer_format)


def option_letter_ids(tokenizer, model_name: str, n: int = 8, answer_format: AnswerFormat = "letter") -> list[int]:
    """Token ids of the option letters A.. as the model would write them after the answer prefix;
    an error names the model if a letter is not exactly one known token."""
    prefix_text = prompts.answer_prefix(answer_format)
    prefix = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in LETTERS[:n]:
        pieces = tokenizer(f"{prefix_text} {letter}", add_special_tokens=False)["input_ids"]
        if pieces[: len(prefix)] != prefix or len(pieces) != len(prefix) + 1 or pieces[-1] == tokenizer.unk_token_id:
            raise ValueError(
                f"model {model_name!r}: option letter {letter!r} is not a single token after "
                f"{prefix_text!r}; the {answer_format} format needs one token per letter"
            )
        ids.append(pieces[-1])
    return ids


@torch.no_grad()
def option_logits(
    adapter: VLMAdapter,
    texts: list[str],
    options: list[list[str]],
    answer_format: AnswerFormat,
    batch_size: int = 128,
    images: list | None = None,
    group: int = 1,
) -> Tensor:
    """Scores over each prompt's options, [N, max options]; a softmax over a row is the model's
    distribution over its options, and columns beyond a row's own options are -inf.

    `texts` are rendered prompts ending in the answer prefix; `images` (one per prompt) for a VLM.
    letter: the logits of the option letters at the answer position.
    cloze: log p(option text + EOS | prompt) summed over tokens; each prompt's keys/values are
    computed once and shared by all its options.
    `group=G` (text-only models): prompts come in runs of G that share a beginning, e.g. the draws
    and rotations of one caption. Each run's common token prefix is then encoded once: the
    reward's prompts repeat the instructions and the caption for every question. Runs only
    save work: a run that straddles two captions (questions with different option counts)
    shares less but scores the same."""
    check_format(answer_format)
    width = max(len(o) for o in options)
    out = torch.full((len(texts), width), float("-inf"))
    letter_ids = None
    if answer_format in LETTER_FORMATS:
        letter_ids = option_letter_ids(adapter.tokenizer, adapter.model.name_or_path, width, answer_format)
    shared = images is None and not adapter.mrope  # Qwen-VL positions depend on images: no cache reuse
    step = max(1, batch_size // group) * group if shared else batch_size
    for s in range(0, len(texts), step):
        chunk = slice(s, s + step)
        rows = options[chunk]
        padded = [o[j] if j < len(o) else "" for o in rows for j in range(width)]
        if shared:
            scores = _shared_prefix_scores(adapter, texts[chunk], padded, width, letter_ids, group)
        else:
            pictures = None if images is None else images[chunk]
            scores = _whole_prompt_scores(adapter, texts[chunk], pictures, padded, width, letter_ids)
        for i, o in enumerate(rows):
            out[s + i, : len(o)] = scores[i, : len(o)].cpu()
    return out


def _whole_prompt_scores(adapter, texts, images, padded, width, letter_ids) -> Tensor:
    """Scores [len(texts), width]; `letter_ids` None means cloze."""
    batch = adapter.encode_prompts(texts, images).to(adapter.model.device)
    if letter_ids is not None:
        return adapter.next_token_logits(batch)[:, letter_ids]
    comps = adapter.encode_completions(padded).to(adapter.model.device)
    index = torch.arange(len(batch), device=batch.input_ids.device).repeat_interleave(width)
    logp = adapter.completion_logprobs(batch.select(index), comps, group=width)
    return (logp * comps.mask).sum(-1).view(len(batch), width)


def _shared_prefixes(adapter: VLMAdapter, texts: list[str], group: int) -> tuple[TextCache, Tensor, list[list[int]]]:
    """Each run of `group` prompts' common token prefix, encoded once. Returns its keys/values
    repeated for every prompt of the run, the prefix's token ids per prompt (left-padded), and
    each prompt's remaining tokens (at least one)."""
    rows = adapter.tokenizer(texts, add_special_tokens=False)["input_ids"]
    prefixes, tails, owner = [], [], []
    for g in range(0, len(rows), group):
        run = rows[g : g + group]  # the last run may be shorter
        n = _common_prefix(run, limit=min(len(r) for r in run) - 1)  # every tail keeps >= 1 token
        owner += [len(prefixes)] * len(run)
        prefixes.append(run[0][:n])
        tails += [r[n:] for r in run]
    if min(len(p) for p in prefixes) == 0:
        raise ValueError("a prompt of a single token has no prefix to share; prompts end in the answer prefix")
    ids, mask = _left_padded(adapter, prefixes)
    _, past = text_scorer.extend(adapter.model, ids, mask)
    index = torch.tensor(owner, device=ids.device)
    return past.select(index), ids[index], tails


def _shared_prefix_scores(adapter, texts, padded, width, letter_ids, group) -> Tensor:
    """Three passes on one growing KV cache: each run's shared prefix, each prompt's own tail
    (left-padded, so every row ends at its answer position), then (cloze) all its options
    side by side."""
    device = adapter.model.device
    past, _, tails = _shared_prefixes(adapter, texts, group)
    answer, past = text_scorer.extend(adapter.model, *_left_padded(adapter, tails), past)
    if letter_ids is not None:
        return answer[:, letter_ids]
    comps = adapter.encode_completions(padded).to(device)
    ids, mask = comps.ids.view(len(texts), width, -1), comps.mask.view(len(texts), width, -1)
    # every option of a prompt, side by side
    return text_scorer.branch_logprobs(adapter.model, ids, mask, past, answer).sum(-1)


@torch.no_grad()
def sample_answers(
    adapter: VLMAdapter,
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 128,
    group: int = 1,
) -> list[str]:
    """What a text-only model writes after each rendered prompt, sampled at `temperature`.
    As in `option_logits`, runs of `group` prompts that share a beginning encode it once, and
    generation continues from its cache: what vLLM's prefix caching does for CapRL's reward
    server, where a caption's questions repeat the instructions and caption."""
    if adapter.mrope:
        raise ValueError("sample_answers() is for text-only readers; Qwen-VL positions depend on the images")
    out = []
    step = max(1, batch_size // group) * group
    for s in range(0, len(texts), step):
        past, prefix_ids, tails = _shared_prefixes(adapter, texts[s : s + step], group)
        tail_ids, tail_mask = _left_padded(adapter, tails)
        batch = PromptBatch(torch.cat([prefix_ids, tail_ids], 1), torch.cat([past.mask, tail_mask], 1))
        out += adapter.decode(adapter.generate(batch, max_new_tokens, temperature=temperature, past=past))
    return out


def _left_padded(adapter: VLMAdapter, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    enc = adapter.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")  # left: the adapter's side
    return enc["input_ids"].to(adapter.model.device), enc["attention_mask"].to(adapter.model.device)


def _common_prefix(rows: list[list[int]], limit: int) -> int:
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def sampled_choice(answer: str, options: list[str], answer_format: AnswerFormat) -> int | None:
    """The option a generated answer picks, or None: the first standalone option letter; in
    caprl format the first standalone letter A-I (as CapRL parses it: a letter past the options
    is a wrong answer); in cloze format the longest option the answer starts with."""
    if answer_format == "letter":
        m = re.search(rf"\b([{LETTERS[: len(options)]}])\b", answer)
        return LETTERS.index(m[1]) if m else None
    if answer_format == "caprl":
        m = re.search(rf"\b([{LETTERS[: prompts.CAPRL_MAX_OPTIONS]}])\b", answer)
        pick = LETTERS.index(m[1]) if m else None
        return pick if pick is not None and pick < len(options) else None
    words = answer.split()
    fits = [j for j, o in enumerate(options) if words[: len(o.split())] == o.split()]
    return max(fits, key=lambda j: len(options[j].split()), default=None)
