from lit_caprl.data.datamodules import CaptionData, PromptData, ShapesCaptionData, ShapesPromptData, ShapesReaderData

__all__ = ["CaptionData", "PromptData", "ShapesCaptionData", "ShapesPromptData", "ShapesReaderData"]
