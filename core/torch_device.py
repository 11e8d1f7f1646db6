"""Device choice for the engines that run PyTorch (imported only by them).

`--device auto` means the GPU the orchestrator gave the service (it sets
CUDA_VISIBLE_DEVICES), else the CPU; asking for CUDA where torch sees none is
an error that says so, not a silent fall back to the CPU.
"""

from __future__ import annotations

import argparse
import os

import torch


def choose_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {requested} was asked for, but torch sees no CUDA GPU")
    return requested


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, as choose_device and choose_dtype read them."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="auto: float16 on CUDA, float32 on the CPU"
    )


def choose_dtype(requested: str, device: str) -> torch.dtype:
    """--dtype: a name in DTYPES, or auto: float16 on CUDA, float32 on the CPU."""
    return DTYPES.get(requested) or (torch.float16 if device.startswith("cuda") else torch.float32)


def keep_to_reservation(device: str) -> None:
    """On a GPU, stay within the share of the card the orchestrator reserved
    (MODELYARD_GPU_MEMORY_FRACTION): several services may share one card."""
    fraction = float(os.environ.get("MODELYARD_GPU_MEMORY_FRACTION") or 0)
    if device.startswith("cuda") and fraction > 0:
        torch.cuda.set_per_process_memory_fraction(min(fraction, 1.0))
