"""core/batching.py: concurrent requests share model calls, and each gets
exactly its own results back, in order, whatever else fails or gives up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.batching import DynamicBatcher


class RecordingModel:
    """Doubles each item, remembering every batch it was called with."""

    def __init__(self, fail_on: int | None = None, hold: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.hold = hold

    def __call__(self, items: list[int]) -> list[int]:
        if self.hold is not None:
            self.hold.wait(10)
        self.batches.append(list(items))
        if self.fail_on in items:
            raise ValueError(f"cannot encode {self.fail_on}")
        return [2 * item for item in items]


async def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_ms=50)
    requests = [list(range(n * 10, n * 10 + 3)) for n in range(5)]
    results = await asyncio.gather(*(batcher.submit(items) for items in requests))
    assert results == [[2 * i for i in items] for items in requests]
    assert sum(len(b) for b in model.batches) == 15
    assert max(len(b) for b in model.batches) == 8  # full batches, not one call per request
    assert len(model.batches) == 2
    assert batcher.stats.as_dict()["mean_batch"] == 7.5
    await batcher.close()


async def test_batch_size_one_means_one_item_per_call() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_ms=50)
    results = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]))
    assert results == [[2, 4], [6]]
    assert model.batches == [[1], [2], [3]]
    await batcher.close()


async def test_a_lone_request_runs_without_companions() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=32, max_wait_ms=10)
    assert await asyncio.wait_for(batcher.submit([7]), 5) == [14]
    await batcher.close()


async def test_items_arriving_during_a_batch_form_the_next_one() -> None:
    hold = threading.Event()
    model = RecordingModel(hold=hold)
    batcher = DynamicBatcher(model, max_batch_size=16, max_wait_ms=0)
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.05)  # the first batch is now running (held)
    later = [asyncio.create_task(batcher.submit([n])) for n in range(2, 6)]
    await asyncio.sleep(0.05)
    hold.set()
    assert await first == [2]
    assert [await task for task in later] == [[4], [6], [8], [10]]
    assert model.batches == [[1], [2, 3, 4, 5]]
    await batcher.close()


async def test_a_bad_item_fails_only_its_own_request() -> None:
    model = RecordingModel(fail_on=13)
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_ms=20)
    good, bad, neighbour = await asyncio.gather(
        batcher.submit([1, 2]), batcher.submit([13]), batcher.submit([4]), return_exceptions=True
    )
    assert good == [2, 4] and neighbour == [8]  # shared the failed batch, answered anyway
    assert isinstance(bad, ValueError) and "13" in str(bad)
    assert model.batches[0] == [1, 2, 13, 4]  # one call first; singles only after it failed
    # The batcher keeps working after a failure.
    assert await batcher.submit([5]) == [10]
    await batcher.close()


async def test_a_cancelled_request_is_skipped_and_others_still_answered() -> None:
    hold = threading.Event()
    model = RecordingModel(hold=hold)
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_ms=0)
    running = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(batcher.submit([100, 101]))
    kept = asyncio.create_task(batcher.submit([3]))
    await asyncio.sleep(0.01)
    gone.cancel()  # the client went away while its texts waited
    hold.set()
    assert await running == [2] and await kept == [6]
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert [100, 101] not in model.batches and all(100 not in b for b in model.batches)
    await batcher.close()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(RecordingModel(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(RecordingModel(), max_wait_ms=-1)
