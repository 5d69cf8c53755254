"""The two batch types every stage passes around: left-padded prompts (with whatever image
tensors the model family needs) and right-padded completions ending in EOS."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
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

    def select(self, index: Tensor) -> PromptBatch:
        """Rows `index` (repeats allowed); Qwen-VL's patches are flattened over the batch, so
        they are sliced per sample by each image's grid."""
        pixels = self.pixel_values
        if pixels is not None and self.image_grid_thw is not None:
            per_sample = torch.split(pixels, self.image_grid_thw.prod(-1).tolist())
            pixels = torch.cat([per_sample[i] for i in index.tolist()])
        elif pixels is not None:
            pixels = pixels[index]
        return PromptBatch(
            self.input_ids[index],
            self.attention_mask[index],
            pixels,
            None if self.image_grid_thw is None else self.image_grid_thw[index],
            None if self.mm_token_type_ids is None else self.mm_token_type_ids[index],
        )

    @staticmethod
    def concat(batches: list[PromptBatch], pad_id: int) -> PromptBatch:
        """The rows of several batches in order, left-padded again to the longest prompt."""
        width = max(b.input_ids.shape[1] for b in batches)

        def cat(name: str, value: int = 0) -> Tensor | None:
            parts = [getattr(b, name) for b in batches]
            if parts[0] is None:
                return None
            if name in ("input_ids", "attention_mask", "mm_token_type_ids"):
                parts = [F.pad(t, (width - t.shape[1], 0), value=value) for t in parts]
            return torch.cat(parts)  # Qwen-VL's flattened patches and LLaVA's images both stack on dim 0

        names = ("attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
        return PromptBatch(cat("input_ids", pad_id), *(cat(n) for n in names))


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

    @staticmethod
    def concat(parts: list[Completions], pad_id: int) -> Completions:
        """The rows of several completion batches in order, right-padded to the widest."""
        width = max(c.ids.shape[1] for c in parts)
        ids = torch.cat([F.pad(c.ids, (0, width - c.ids.shape[1]), value=pad_id) for c in parts])
        mask = torch.cat([F.pad(c.mask, (0, width - c.mask.shape[1])) for c in parts])
        return Completions(ids, mask, torch.cat([c.truncated for c in parts]))
