"""Data: the JSONL schema, ShapesWorld, readers of CapRL's formats, and the DataModules.

The DataModules (which need torch and Lightning) load on first use, so the data tools
(`lit-caprl data import / check`) start without them."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CaptionData",
    "PairData",
    "PromptData",
    "ShapesCaptionData",
    "ShapesImageTextData",
    "ShapesJudgeData",
    "ShapesPromptData",
    "ShapesReaderData",
    "ShapesVQAData",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lit_caprl.data import datamodules, shapes_data

        return getattr(shapes_data if name.startswith("Shapes") else datamodules, name)
    raise AttributeError(f"module 'lit_caprl.data' has no attribute {name!r}")
