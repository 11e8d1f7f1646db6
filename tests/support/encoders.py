"""What the encoder engine tests share: texts, the sentence-transformers
reference (computed in another process, with an engine's interpreter) and
vector arithmetic."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
from pathlib import Path

from tests.conftest import ROOT
from tests.support.engine_process import engine_python, prepared_model

TEXTS = [
    "A cat sits on the mat.",
    "A kitten is sitting on a rug.",
    "Stock markets fell sharply on Monday.",
    "short",
    "A much longer sentence, so that a batch holds texts of very different lengths and padding matters: "
    "the quick brown fox jumps over the lazy dog while the orchestrator keeps the GPUs busy.",
]


def minilm_dir() -> Path:
    return prepared_model("MODELYARD_MINILM_DIR", "all-minilm-l6-v2", "modules.json")


def reference(texts: list[str]) -> list[list[float]]:
    """sentence-transformers' own answers, one text at a time, in another process."""
    done = subprocess.run(
        [str(engine_python("embeddings")), str(ROOT / "tests/support/st_reference.py"), str(minilm_dir())],
        input=json.dumps(texts), capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(done.stdout)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def decode_base64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
