"""Where engines put what they generate for `url` answers.

An engine writes the file under $MODELYARD_FILES_DIR (the orchestrator's
<state>/files) and answers FILE_SCHEME + its relative path; the orchestrator
signs that into an expiring URL and serves the file (orchestrator/files.py).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from core.protocol import FILE_SCHEME


def save_generated(data: bytes, folder: str, suffix: str) -> str:
    """Write data as <files dir>/<folder>/<random name><suffix>; its answer URL."""
    root = Path(os.environ.get("MODELYARD_FILES_DIR") or Path.cwd() / "files")
    relative = f"{folder}/{uuid.uuid4().hex}{suffix}"
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)  # never a half-written file under a URL
    return FILE_SCHEME + relative
