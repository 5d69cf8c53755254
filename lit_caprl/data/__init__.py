from lit_caprl.data.datamodules import CaptionData, ShapesCaptionData, ShapesReaderData

__all__ = ["CaptionData", "ShapesCaptionData", "ShapesReaderData"]
