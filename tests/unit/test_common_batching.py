"""The batcher shared by concurrent handlers: order, batch bounds, and who sees which failure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from civicline.common.batching import Batcher
from civicline.common.failures import DependencyUnavailable


class Recorder:
    def __init__(self, *, bad: set[int] | None = None, outage: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.bad = bad or set()
        self.outage = outage  # calls that find the database unreachable

    async def process(self, batch: Sequence[int]) -> list[int]:
        self.batches.append(list(batch))
        await asyncio.sleep(0.001)  # an I/O round trip: more items queue up meanwhile
        if self.outage:
            self.outage -= 1
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


async def test_an_outage_is_waited_out_with_the_batch_in_hand_and_order_kept() -> None:
    # Failed back to its handlers, each would submit again after its own random backoff, in
    # another order: a STOP could then be applied before the message sent ahead of it.
    recorder = Recorder(outage=3)
    outcomes = await run(recorder, range(5), size=10)
    assert outcomes == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2, 3, 4]] * 4  # the same batch, never split up


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


async def test_a_cancellation_from_below_is_an_outage_waited_out_and_the_batcher_goes_on() -> None:
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
        assert await asyncio.wait_for(batcher.submit(1), 5) == 1  # waited out, tried again
        assert calls == [[1], [1]]
        assert await asyncio.wait_for(batcher.submit(2), 5) == 2
    finally:
        await batcher.close()


async def test_a_stop_ends_the_wait_for_an_outage_and_fails_the_batch_to_its_handlers() -> None:
    recorder = Recorder(outage=1_000_000)  # the database stays unreachable
    batcher: Batcher[int, int] = Batcher(recorder.process, size=10, linger=0, name="test")
    batcher.start()
    try:
        waiting = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        for _ in range(100):
            if batcher.waiting_out_outage:  # the process is not ready meanwhile
                break
            await asyncio.sleep(0.01)
        assert batcher.waiting_out_outage
        for _ in range(20):  # a stop is the only way out: it would wait for ever
            await asyncio.sleep(0.05)
            assert not any(task.done() for task in waiting)
        tries = len(recorder.batches)
        batcher.stopping()
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 3)
    finally:
        await batcher.close()
    # Each handler hears of the outage, so its consumer leaves the message to be redelivered.
    assert all(isinstance(outcome, DependencyUnavailable) for outcome in outcomes)
    assert [batcher.waiting_out_outage] == [False]  # ready again
    # One more try of the whole batch, then back to the handlers together: not item by item
    # (each as slow as a hung dependency, and later items could go through before earlier).
    assert recorder.batches[tries:] == [[0, 1, 2]]
