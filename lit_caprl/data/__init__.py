from lit_caprl.data.datamodules import (
    CaptionData,
    PairData,
    PromptData,
    ShapesCaptionData,
    ShapesPromptData,
    ShapesReaderData,
    ShapesVQAData,
)

__all__ = [
    "CaptionData",
    "PairData",
    "PromptData",
    "ShapesCaptionData",
    "ShapesPromptData",
    "ShapesReaderData",
    "ShapesVQAData",
]
