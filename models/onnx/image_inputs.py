"""Images for the onnx engine's classifier: decode what a request sent, and
turn it into the model's input the way its transformers image processor does.

The server runs this (Pillow and numpy, no torch, no transformers); the
converter runs the same code on its check images and refuses the conversion
unless the result equals the model's own image processor's (PIL backend), so
what is served is what PyTorch would have seen.

The steps, as the converter writes them into the manifest's `preprocess`:
  resize   {"height", "width"}: to exactly that size; or {"shortest_edge"}:
           the short side to that, the long side in proportion (transformers'
           rounding down); resample is a PIL filter number
  crops    [{"height", "width"}, ...]: the centre, padded with zeros if
           smaller, one crop after another (ConvNeXT crops twice)
  rescale  multiply by this (1/255 usually); normalize: (x - mean) / std
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
# Raster formats Pillow decodes itself; others (EPS would run Ghostscript) are refused.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class ImageInputError(ValueError):
    """An input is not an image this service can read; the message says why."""


def decode_image(value: str, max_pixels: int) -> Image.Image:
    """A request's image (base64, or a data: URL holding base64) as RGB;
    transparency is composited on white, as transformers' convert_to_rgb does."""
    if value.startswith(("http://", "https://")):
        raise ImageInputError("is a URL, and images are not fetched: send the image itself as base64 or a data: URL")
    payload = "".join(_DATA_URL.sub("", value, count=1).split())  # base64 tools wrap lines
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("is not base64 (or a data:image/...;base64, URL)") from None
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > max_pixels:
            raise ImageInputError(f"is {width}x{height} pixels; the limit is {max_pixels}")
        image.load()
        return to_rgb(image)
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise ImageInputError(f"is larger than the limit of {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageInputError(f"is not an image Pillow can read as {', '.join(FORMATS)} "
                              f"({type(exc).__name__})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, resize: dict[str, int]) -> tuple[int, int]:
    """(width, height) after the resize step."""
    if "shortest_edge" in resize:
        edge = resize["shortest_edge"]
        short, long = min(width, height), max(width, height)
        longer = int(edge * long / short)  # transformers' get_resize_output_image_size
        return (edge, longer) if width <= height else (longer, edge)
    return resize["width"], resize["height"]


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) cut to its centre; zero-padded first where it is smaller
    (transformers' center_crop, rounding included)."""
    rows, cols = pixels.shape[-2:]
    top, left = (rows - height) // 2, (cols - width) // 2
    if top >= 0 and left >= 0 and top + height <= rows and left + width <= cols:
        return pixels[:, top:top + height, left:left + width]
    new_rows, new_cols = max(rows, height), max(cols, width)
    padded = np.zeros((pixels.shape[0], new_rows, new_cols), dtype=pixels.dtype)
    pad_top, pad_left = math.ceil((new_rows - rows) / 2), math.ceil((new_cols - cols) / 2)
    padded[:, pad_top:pad_top + rows, pad_left:pad_left + cols] = pixels
    top, left = top + pad_top, left + pad_left
    return padded[:, max(0, top):min(new_rows, top + height), max(0, left):min(new_cols, left + width)]


def preprocess(image: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """An RGB image as the model's (3, H, W) float32 input, per the manifest's spec."""
    resize = spec.get("resize")
    if resize:
        size = resized_size(image.width, image.height, resize)
        if size != image.size:
            image = image.resize(size, resample=Image.Resampling(spec["resample"]))
    pixels = np.moveaxis(np.asarray(image), -1, 0)
    for crop in spec.get("crops") or ():
        pixels = center_crop(pixels, crop["height"], crop["width"])
    values = pixels.astype(np.float32)
    if spec.get("rescale") is not None:
        values = (pixels.astype(np.float64) * spec["rescale"]).astype(np.float32)
    if spec.get("mean") is not None:
        mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
        values = (values - mean) / std
    return np.ascontiguousarray(values, dtype=np.float32)
