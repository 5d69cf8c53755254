"""The two batch types every stage passes around: left-padded prompts (with whatever image
tensors the model family needs) and right-padded completions ending in EOS."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


class _Tensors:
    def to(self, device: torch.device | str):
        """A copy with every tensor field on `device`."""
        return replace(self, **{f.name: v.to(device) for f in fields(self) if (v := getattr(self, f.name)) is not None})


@dataclass
class PromptBatch(_Tensors):
    """Left-padded prompts plus whatever image tensors the family needs."""

    input_ids: Tensor
    attention_mask: Tensor
    pixel_values: Tensor | None = None
    image_grid_thw: Tensor | None = None
    mm_token_type_ids: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class Completions(_Tensors):
    """Right-padded completion tokens; `mask` covers each completion up to and including its EOS."""

    ids: Tensor
    mask: Tensor
    truncated: Tensor  # bool per row: no EOS within the token budget

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(-1)

    def select(self, rows: Tensor, trim: bool = False) -> Completions:
        """Rows `rows`; `trim` drops the columns past their longest completion (no compute on
        all-padding columns)."""
        width = max(int(self.mask[rows].sum(-1).max()), 1) if trim else self.ids.shape[1]
        return Completions(self.ids[rows, :width], self.mask[rows, :width], self.truncated[rows])
