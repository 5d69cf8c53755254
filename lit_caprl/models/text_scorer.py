"""Scoring many continuations of one text prefix without re-encoding it: the reader's MCQ
options (`mcq.option_logits`). Text-only decoders only: Qwen-VL positions depend on the images.

`extend` runs token rows after a cache of earlier rows; `branch_logprobs` scores several
branches per row in one packed pass whose attention mask keeps branches apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TextCache:
    """Keys/values of text rows already run through the model (`extend`), their
    attention mask, and the position each row continues from."""

    kv: object
    mask: Tensor
    next_position: Tensor

    def select(self, index: Tensor) -> TextCache:
        """Rows `index`, repeats allowed (the keys/values are selected in place)."""
        self.kv.batch_select_indices(index)
        return TextCache(self.kv, self.mask[index], self.next_position[index])


def extend(
    model: torch.nn.Module, ids: Tensor, mask: Tensor, past: TextCache | None = None
) -> tuple[Tensor, TextCache]:
    """Run token rows `ids` (padding anywhere, where `mask` is 0) after `past`'s
    rows; returns the next-token logits after each row, [N, V], and the extended cache.
    Scoring many continuations of one prefix this way encodes the prefix once (see
    `mcq.option_logits`); positions continue each row's own count, as in one long pass."""
    start = torch.zeros(len(ids), dtype=torch.long, device=ids.device) if past is None else past.next_position
    full = mask if past is None else torch.cat([past.mask, mask], dim=1)
    offset = 0 if past is None else past.mask.shape[1]
    out = model(
        input_ids=ids,
        attention_mask=full,
        position_ids=start[:, None] + (mask.long().cumsum(-1) - 1).clamp(min=0),
        cache=None if past is None else past.kv,
        use_cache=True,
        logits_to_keep=1,
        cache_position=torch.arange(offset, offset + ids.shape[1], device=ids.device),
    )
    return out.logits[:, -1].float(), TextCache(out.cache, full, start + mask.sum(-1))


def branch_logprobs(model: torch.nn.Module, ids: Tensor, mask: Tensor, past: TextCache, last: Tensor) -> Tensor:
    """Log-probs of several continuations of each of `past`'s rows, in one pass
    that never repeats the rows' keys/values. `ids`/`mask` are [N, B, T]: B right-padded
    branches per row; `last` [N, V] are the next-token logits after each row (from
    `extend`). Each branch sees its row's past and its own earlier tokens, never another
    branch, and starts at the row's next position, as if it ran alone. The branches' tokens
    are packed end to end, so padding costs nothing. Returns log p of every branch token,
    [N, B, T] (0 at padding). `past`'s cache is consumed."""
    n, branches, length = ids.shape
    device = ids.device
    valid = mask.reshape(n, -1).bool()
    width = int(valid.sum(-1).max())
    pack = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :width]  # real tokens first, in order
    tokens, real = ids.reshape(n, -1).gather(1, pack), valid.gather(1, pack)
    branch = torch.arange(branches, device=device).repeat_interleave(length)[pack]
    step = torch.arange(length, device=device).repeat(branches)[pack]
    new = (branch[:, :, None] == branch[:, None, :]) & (step[:, None, :] <= step[:, :, None]) & real[:, None, :]
    old = past.mask.bool()[:, None, :].expand(n, width, -1)
    allowed = torch.cat([old, new], dim=-1)[:, None]  # [N, 1, width, past + width]
    additive = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    offset, positions = past.mask.shape[1], past.next_position[:, None] + step
    logits = model(
        input_ids=tokens,
        attention_mask=additive.to(model.dtype),
        position_ids=positions,
        cache=past.kv,
        use_cache=True,
        logits_to_keep=width,
        cache_position=torch.arange(offset, offset + width, device=device),
    ).logits.float()
    # A branch's first token follows the row itself; every later one, the token packed before it.
    before = torch.cat([last[:, None], logits[:, :-1]], dim=1)
    before = torch.where((step == 0)[..., None], last[:, None], before)
    logp = before.log_softmax(-1).gather(2, tokens[..., None]).squeeze(-1) * real
    return torch.zeros(n, branches * length, device=device).scatter_(1, pack, logp).view(n, branches, length)
