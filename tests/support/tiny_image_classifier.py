"""Build a tiny random-weight ViT image classifier (3 labels) with an image
processor, from configs, with no download, and save it where
AutoModelForImageClassification and AutoImageProcessor load it. Runs with the
onnx engine's Python.

    python tests/support/tiny_image_classifier.py OUT_DIR [--processor NAME]

vit: resize to exactly 32x32; convnext: shortest edge 32 with crop_pct (resize
to 36, crop 32x32); convnext-crop: the same at 36, then its own centre crop to
32x32; bit: shortest edge 40, centre crop 32x32, CLIP's mean and std; levit:
LeViT's own resize (shortest edge 256/224 of its size), which the server's
preprocessing does not reproduce; padded: pads to a size, which the converter
does not support.
"""

import argparse
import warnings
from pathlib import Path

import torch
from transformers import (
    BitImageProcessor,
    ConvNextImageProcessor,
    LevitImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("--processor", default="vit", choices=["vit", "convnext", "convnext-crop", "bit", "levit", "padded"])
args = parser.parse_args()
torch.manual_seed(0)

labels = {0: "cat", 1: "dog", 2: "bird"}
config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():  # larger logits than random init gives: scores that tell the labels apart
        model.classifier.weight.normal_(0, 0.3)
    if args.processor == "vit":
        processor = ViTImageProcessor(size={"height": 32, "width": 32})
    elif args.processor == "convnext":
        processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    elif args.processor == "convnext-crop":
        processor = ConvNextImageProcessor(size={"shortest_edge": 36}, crop_pct=0.875, do_center_crop=True,
                                           crop_size={"height": 32, "width": 32})
    elif args.processor == "levit":
        processor = LevitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif args.processor == "bit":
        processor = BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    else:
        processor = ViTImageProcessor(
            size={"height": 32, "width": 32}, do_pad=True, pad_size={"height": 40, "width": 40}
        )
model.save_pretrained(args.out)
processor.save_pretrained(args.out)
print(f"tiny image classifier written to {args.out}")
