"""The batcher shared by concurrent handlers: order, batch bounds, and who sees which failure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from civicline.common.batching import Batcher
from civicline.common.failures import DependencyUnavailable


class Recorder:
    def __init__(self, *, bad: set[int] | None = None, outage: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.bad = bad or set()
        self.outage = outage

    async def process(self, batch: Sequence[int]) -> list[int]:
        self.batches.append(list(batch))
        await asyncio.sleep(0.001)  # an I/O round trip: more items queue up meanwhile
        if self.outage:
            raise DependencyUnavailable("database unreachable")
        if self.bad & set(batch):
            raise ValueError(f"cannot store {sorted(self.bad & set(batch))}")
        return [item * 10 for item in batch]


async def run(recorder: Recorder, items: range, size: int) -> list[BaseException | int]:
    batcher: Batcher[int, int] = Batcher(recorder.process, size=size, linger=0.01, name="test")
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)
    finally:
        await batcher.close()


async def test_items_are_processed_in_the_order_submitted_in_bounded_batches() -> None:
    recorder = Recorder()
    outcomes = await run(recorder, range(250), size=100)
    assert outcomes == [i * 10 for i in range(250)]  # each caller gets its own result
    assert [i for batch in recorder.batches for i in batch] == list(range(250))
    assert max(len(b) for b in recorder.batches) <= 100
    assert len(recorder.batches) < 10  # batched, not one by one


async def test_an_outage_fails_every_item_of_the_batch_without_retrying_each() -> None:
    recorder = Recorder(outage=True)
    outcomes = await run(recorder, range(5), size=10)
    assert all(isinstance(o, DependencyUnavailable) for o in outcomes)
    assert recorder.batches == [[0, 1, 2, 3, 4]]


async def test_one_bad_item_fails_alone_and_its_batch_mates_go_through() -> None:
    recorder = Recorder(bad={3})
    outcomes = await run(recorder, range(6), size=10)
    assert [o if isinstance(o, int) else type(o).__name__ for o in outcomes] == [
        0,
        10,
        20,
        "ValueError",
        40,
        50,
    ]
    # The batch, then each item alone in order.
    assert recorder.batches == [[0, 1, 2, 3, 4, 5], [0], [1], [2], [3], [4], [5]]


def test_a_batch_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Recorder().process, size=0, linger=0.01, name="test")


async def test_a_cancellation_from_below_fails_its_batch_and_the_batcher_goes_on() -> None:
    # aiormq cancels its own channel tasks when a channel closes; a batch awaiting one sees a
    # CancelledError that is not the batcher's. Before, it ended the batcher's task, and every
    # later item waited forever (the router stopped routing after a black-holed broker).
    calls: list[list[int]] = []

    async def process(batch: Sequence[int]) -> list[int]:
        calls.append(list(batch))
        if len(calls) == 1:
            inner = asyncio.ensure_future(asyncio.sleep(10))
            asyncio.get_running_loop().call_soon(inner.cancel)
            await inner  # raises CancelledError, as a cancelled library task does
        return list(batch)

    batcher: Batcher[int, int] = Batcher(process, size=10, linger=0, name="test")
    batcher.start()
    try:
        first = await asyncio.wait_for(asyncio.gather(batcher.submit(1), return_exceptions=True), 5)
        assert isinstance(first[0], DependencyUnavailable)  # an outage: waited out, retried
        assert await asyncio.wait_for(batcher.submit(2), 5) == 2
    finally:
        await batcher.close()
