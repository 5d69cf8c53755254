"""Real images into the RGB the processors expect: any mode, EXIF orientation applied.

`Image.convert("RGB")` alone gets three kinds of real image wrong: a phone JPEG shown on its
side (EXIF orientation), a transparent PNG whose hidden pixels turn black, and a 16-bit
greyscale PNG that clips to white. Size is left to the processor (Qwen2.5-VL's `max_pixels`,
LLaVA's fixed resize), so images of any size mix in one batch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, upright, transparency composited on white, high bit depths scaled to 8 bits."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.int64)  # 16-bit samples (PNG stores them as I or I;16)
        image = Image.fromarray((np.clip(grey, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode a file or encoded bytes (PNG, JPEG, ...) fully into RGB (see `to_rgb`)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.load()
        return to_rgb(im)


def image_format(data: bytes) -> str:
    """The file extension of encoded image bytes (png, jpeg, ...), checking they fully decode:
    `verify()` alone misses truncated pixel data."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "").lower()
        im.load()
    if not fmt:
        raise ValueError("unknown image format")
    return {"jpeg": "jpg"}.get(fmt, fmt)
