"""One orchestrator per state directory.

The lock makes reaping safe: whoever holds it knows every service tagged with
this instance id and another parent is a leftover, not a live sibling's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path


class InstanceLocked(Exception):
    pass


def instance_id(state_dir: Path) -> str:
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


def acquire_lock(state_dir: Path) -> int:
    """Hold <state_dir>/orchestrator.lock for the life of this process."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "orchestrator.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise InstanceLocked(
            f"another orchestrator (pid {holder}) already uses the state directory {state_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
