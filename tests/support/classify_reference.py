"""Test images and what PyTorch says about them: run with the onnx engine's
Python against a transformers image classifier directory. Prints JSON:
{"images": [base64 ...], "scores": [[probability per label] ...]}.

The images differ in size, shape, mode (RGB, grayscale with alpha, RGBA,
palette) and format (PNG, JPEG). The reference goes the way a transformers
user goes: transformers' convert_to_rgb, the model's image processor (PIL
backend), the PyTorch model, softmax.

    python tests/support/classify_reference.py MODEL_DIR
"""

import base64
import io
import json
import sys

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_transforms import convert_to_rgb

rng = np.random.default_rng(1)


def noise(width: int, height: int, channels: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels)).astype(np.uint8)


images = [
    (Image.fromarray(noise(50, 70, 3), "RGB"), "PNG"),
    (Image.fromarray(noise(90, 40, 3), "RGB"), "JPEG"),
    (Image.fromarray(noise(33, 33, 2), "LA"), "PNG"),
    (Image.fromarray(noise(64, 100, 4), "RGBA"), "PNG"),
    (Image.fromarray(noise(120, 80, 3), "RGB").convert("P"), "PNG"),
    (Image.fromarray(noise(16, 24, 3), "RGB"), "PNG"),
]
encoded, decoded = [], []
for image, fmt in images:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    encoded.append(base64.b64encode(buffer.getvalue()).decode())
    decoded.append(convert_to_rgb(Image.open(io.BytesIO(buffer.getvalue())), return_numpy=False))

processor = AutoImageProcessor.from_pretrained(sys.argv[1], backend="pil")
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.inference_mode():
    logits = model(**processor(images=decoded, return_tensors="pt")).logits
print(json.dumps({"images": encoded, "scores": torch.softmax(logits, dim=-1).tolist()}))
