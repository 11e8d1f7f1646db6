"""Supervision of one service process (the seed's service_manager).

A service runs in its own process group so that stopping it stops everything
it spawned (vLLM starts engine-core children). Its stdout and stderr go to a
size-rotated log file, and the last lines stay in memory for error messages.
Layers that make sure no service outlives the orchestrator (docs/ARCHITECTURE.md,
"No orphans"): the kernel's parent-death signal, the reaper sidecar
(core/reaper.py) using reap_orphans(parent=...), reap_orphans() when the next
orchestrator starts on the same state directory, and BaseService's watchdog.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import logging.handlers
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import psutil

from core.logs import redact

log = logging.getLogger("modelyard.process")

INSTANCE_ENV = "MODELYARD_INSTANCE"
PARENT_ENV = "MODELYARD_PARENT_PID"
SERVICE_ID_ENV = "MODELYARD_SERVICE_ID"  # the scheduler's id of the service: chat, or chat~2 for a replica
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
_PR_SET_PDEATHSIG = 1


class StartupError(Exception):
    """The service exited or never became healthy; message says why."""


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None


def free_port() -> int:
    """A port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Resolved once here: loading a library in the forked child of a threaded
# process can deadlock.
try:
    _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the reaper sidecar still covers us
    _prctl = None


def die_with_this_process() -> Callable[[], None]:
    """A preexec_fn that makes the child get SIGTERM when we die.

    Call it in the parent; the returned function runs in the child between
    fork and exec. If we died before it ran, the child exits at once.
    """
    parent = os.getpid()

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class _LogPump(threading.Thread):
    """Copies the child's output into a rotating file and keeps a short tail.

    The file is opened before the child is started, so a log that cannot be
    written stops the start instead of leaving an unsupervised process."""

    def __init__(self, path: Path, tail: deque[str]) -> None:
        super().__init__(name=f"log-{path.stem}", daemon=True)
        self.stream: IO[bytes] | None = None
        self.tail = tail
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        self.handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, line: str) -> None:
        self.tail.append(line)
        self.handler.emit(logging.makeLogRecord({"msg": line, "args": None}))

    def run(self) -> None:
        assert self.stream is not None
        try:
            for raw in iter(self.stream.readline, b""):
                self.write(raw.decode("utf-8", "replace").rstrip("\n"))
        finally:
            self.stream.close()
            self.handler.close()


class ServiceProcess:
    """One running service: start, wait until healthy, stop, observe its exit."""

    def __init__(self, name: str, spec: LaunchSpec) -> None:
        self.name = name
        self.spec = spec
        self.tail: deque[str] = deque(maxlen=200)
        self._popen: subprocess.Popen[bytes] | None = None
        self._exited: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def start(self) -> None:
        """Spawn the process. Must run on the event loop's thread: the kernel's
        parent-death signal follows the thread that forked the child."""
        loop = asyncio.get_running_loop()
        try:
            pump = _LogPump(self.spec.log_path, self.tail)
        except OSError as exc:
            raise StartupError(f"cannot write its log {self.spec.log_path}: {exc.strerror}") from None
        # The command line may carry an upstream's API key: never log it in clear.
        pump.write(f"--- modelyard: starting {self.name}: {redact(shlex.join(self.spec.argv))}")
        try:
            self._popen = subprocess.Popen(
                self.spec.argv,
                env=self.spec.env,
                cwd=self.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_this_process(),  # noqa: PLW1509 - one syscall, nothing loaded
            )
        except OSError as exc:
            pump.handler.close()
            raise StartupError(f"cannot execute {self.spec.argv[0]!r}: {exc.strerror}") from None
        pump.stream = self._popen.stdout
        pump.start()
        self._exited = loop.create_future()
        popen, exited = self._popen, self._exited

        def wait_for_exit() -> None:
            code = popen.wait()
            try:
                loop.call_soon_threadsafe(lambda: exited.done() or exited.set_result(code))
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        threading.Thread(target=wait_for_exit, name=f"wait-{self.name}", daemon=True).start()

    async def wait_exit(self) -> int:
        assert self._exited is not None
        return await asyncio.shield(self._exited)

    def last_lines(self, count: int = 8) -> str:
        """The last non-empty lines of its output, credentials redacted: they
        go into error messages that clients see."""
        lines = [line for line in self.tail if line.strip()]
        return redact("\n".join(lines[-count:]))

    def _failure_detail(self) -> str:
        tail = self.last_lines()
        return f"; last log lines:\n{tail}" if tail else ""

    async def wait_healthy(self, url: str, timeout: float, session: aiohttp.ClientSession) -> float:
        """Poll url until it answers 200. Returns seconds waited.

        Intervals start at 5 ms and grow to 50 ms: a fast service is seen
        within milliseconds, and a ready one waits at most 50 ms to be noticed
        (a probe of a port nobody listens on yet costs next to nothing).
        """
        assert self._exited is not None
        began = time.monotonic()
        deadline = began + timeout
        interval = 0.005
        probe_timeout = aiohttp.ClientTimeout(total=2.0)
        while True:
            if self._exited.done():
                code = self._exited.result()
                raise StartupError(f"exited with code {code} before becoming healthy{self._failure_detail()}")
            try:
                async with session.get(url, timeout=probe_timeout) as response:
                    if response.status == 200:
                        return time.monotonic() - began
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            now = time.monotonic()
            if now >= deadline:
                raise StartupError(f"did not become healthy within {timeout:g} s{self._failure_detail()}")
            await asyncio.wait([self._exited], timeout=min(interval, deadline - now))
            interval = min(interval * 1.5, 0.05)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the whole group, then SIGKILL whatever is left after grace."""
        if self._popen is None or self._exited is None:
            return None
        pgid = self._popen.pid  # start_new_session: the group id is the leader's pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout=grace)
        except asyncio.TimeoutError:
            log.warning("service %s ignored SIGTERM for %.1f s; killing", self.name, grace)
        # The leader may be gone while children it spawned linger: kill the group.
        _signal_group(pgid, signal.SIGKILL)
        return await asyncio.shield(self._exited)

    def pids(self) -> list[int]:
        """The service's pid and its children's (they may hold GPU memory too)."""
        if self._popen is None or self.returncode is not None:
            return []
        try:
            root = psutil.Process(self._popen.pid)
            return [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.Error:
            return []

    def memory_bytes(self) -> int:
        """Resident memory of the service and all its children."""
        if self._popen is None or self.returncode is not None:
            return 0
        try:
            root = psutil.Process(self._popen.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap_orphans(instance: str, grace: float = 3.0, parent: int | None = None) -> list[int]:
    """Kill services an earlier orchestrator of this instance left behind.

    Every service carries MODELYARD_INSTANCE in its environment (children
    inherit it), so leftovers are found even when their parent was SIGKILLed.
    With parent, only that orchestrator's services are killed; without it the
    caller must hold the instance lock, so none of these is a live sibling's.
    """
    me = os.getpid()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(INSTANCE_ENV) != instance or env.get(PARENT_ENV) == str(me):
            continue
        if parent is None or env.get(PARENT_ENV) == str(parent):
            found.append(proc)
    for proc in found:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(found, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    pids = [p.pid for p in found]
    if pids:
        log.warning("reaped %d process(es) left by an earlier orchestrator: %s", len(pids), pids)
    return pids
