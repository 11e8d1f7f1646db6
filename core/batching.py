"""DynamicBatcher: many small requests, one model call.

An encoder answers a batch of 32 texts in little more time than one, so texts
from concurrent requests are gathered into one call. The first text of a
batch waits at most `max_wait_ms` for companions; a batch never exceeds
`max_batch_size`; one batch runs at a time, in one worker thread, and texts
that arrive meanwhile form the next batch without waiting further.

    batcher = DynamicBatcher(encode_texts, max_batch_size=32, max_wait_ms=0)
    vectors = await batcher.submit(["first text", "second text"])

A request's items may span batches; its results come back in its order. A
failing batch fails the requests that had items in it, and no other. A
request whose task was cancelled has its items skipped if they have not run
yet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger("modelyard.batching")


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]


@dataclass
class BatchStats:
    """What the batcher did, for /health and benchmarks."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    busy_seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "batches": self.batches,
            "items": self.items,
            "largest_batch": self.largest,
            "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
            "busy_seconds": round(self.busy_seconds, 3),
        }


class DynamicBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        # One thread: the model runs one batch at a time (two would only fight
        # over the same cores); callers may share it with other model work.
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending[Item, Result]] | None = None
        self._worker: asyncio.Task[None] | None = None

    def health(self) -> dict[str, float | int]:
        """The settings and what was done, for a service's /health."""
        return {"max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait * 1000, **self.stats.as_dict()}

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Results for items, in order, once the batches holding them have run."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work(), name="dynamic-batcher")
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future()) for item in items]
        for entry in pending:
            self._queue.put_nowait(entry)
        try:
            return list(await asyncio.gather(*(entry.future for entry in pending)))
        finally:
            for entry in pending:  # caller cancelled: the worker skips what has not run
                entry.future.cancel()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        try:
            await self._batches(queue)
        finally:
            # Closed (or broken): nobody waits forever for an item that will not run.
            while not queue.empty():
                entry = queue.get_nowait()
                if not entry.future.done():
                    entry.future.set_exception(RuntimeError("the batcher stopped"))

    async def _batches(self, queue: asyncio.Queue[_Pending[Item, Result]]) -> None:
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                if queue.empty():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(queue.get_nowait())
            live = [entry for entry in batch if not entry.future.done()]
            if live:
                await self._run(live)

    async def _run(self, batch: list[_Pending[Item, Result]]) -> None:
        try:
            results = await self._call([entry.item for entry in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the requests it concerns
            log.warning("batch of %d failed: %s: %s", len(batch), type(exc).__name__, exc)
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # One bad input must not fail its neighbours' requests: each item
            # again on its own, so only the culprit's request sees the error.
            for entry in batch:
                if not entry.future.done():
                    await self._run([entry])
            return
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    async def _call(self, items: list[Item]) -> Sequence[Result]:
        began = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, items)
        finally:
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.largest = max(self.stats.largest, len(items))
            self.stats.busy_seconds += time.monotonic() - began
        if len(results) != len(items):
            raise RuntimeError(f"batch of {len(items)} items gave {len(results)} results")
        return results


def add_batching_arguments(parser: argparse.ArgumentParser, items: str) -> None:
    """A batched service's engine arguments (models.yaml `args`): max_batch_size, max_wait_ms."""
    parser.add_argument(
        "--max-batch-size", type=_positive_int, default=32, help=f"{items} per model call; 1 = no batching"
    )
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help=f"how long a batch waits for more {items}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
