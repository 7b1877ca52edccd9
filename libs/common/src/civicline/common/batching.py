"""Handlers that run concurrently hand their work to one batcher, which processes it in
batches, one batch at a time, in the order it was handed in.

A handler's `submit` returns its item's result once the batch holding it was processed, or
raises what stopped it, so the consumer acks, retries or dead-letters each message as before;
only the expensive part (one transaction, one round trip per statement) is shared.

A dependency outage is waited out here, with the batch in hand, and the same batch is tried
again: failed back to its handlers, each would wait out the outage on its own random backoff
and submit again, and one citizen's messages would come back in another order. Once the
process is stopping (`stopping()`), an outage fails the batch to its handlers instead, whose
consumer leaves their messages to be redelivered: a stop must not wait for the outage to end.
Any other error
is taken as one bad item: the batch is processed again item by item, in order, so the others
still go through and only the bad one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

from civicline.common.failures import DependencyUnavailable, cancelled_from_below, is_outage

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _settle(done: asyncio.Future[R], outcome: BaseException | R) -> None:
    if done.done():  # the handler was cancelled meanwhile (a shutdown that timed out)
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


class Batcher(Generic[T, R]):
    """`process` takes a batch and returns one result per item, in order."""

    def __init__(
        self,
        process: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        size: int,
        linger: float,
        name: str,
    ) -> None:
        if size < 1:
            raise ValueError("batch size must be at least 1")
        self._process = process
        self._size = size
        self._linger = linger
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._waiting_out = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batcher-{self._name}")

    @property
    def waiting_out_outage(self) -> bool:
        """A batch is held until a dependency is back (the process is not ready meanwhile)."""
        return self._waiting_out > 0

    def stopping(self) -> None:
        """The process is stopping: outages are no longer waited out (see the module)."""
        self._stopping.set()

    async def submit(self, item: T) -> R:
        """Queue `item` (before any await, so items keep the order of the calls) and wait
        until its batch has been processed; returns its result."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        self._has_work.set()
        if len(self._pending) >= self._size:
            self._full.set()
        return await done

    async def _run(self) -> None:
        while True:
            await self._has_work.wait()
            # Linger briefly so items arriving together share one batch; while a batch is
            # being processed the next one fills up by itself (with no linger, that is the
            # only batching: a lone item goes at once, like a group commit).
            if self._linger > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._linger)
            batch = self._pending[: self._size]
            del self._pending[: self._size]
            if len(self._pending) < self._size:
                self._full.clear()
            if not self._pending:
                self._has_work.clear()
            await self._run_batch(batch)

    async def _outlasting_outages(self, items: Sequence[T]) -> Sequence[R]:
        """`process(items)`, tried again with backoff for as long as a dependency is out."""
        attempt = 0
        while True:
            try:
                return await self._process(items)
            except asyncio.CancelledError:
                if not cancelled_from_below():  # our own close
                    raise
                # A library cancelled a task of its own under us (aiormq does when a channel
                # closes): an outage like any other. The batcher must outlive it, or every
                # later item would wait forever.
                error: Exception = DependencyUnavailable("batch cancelled by a dependency")
            except Exception as exc:
                if not is_outage(exc):
                    raise
                error = exc
            if self._stopping.is_set():
                raise error
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning(
                    "batch_waiting_out_outage",
                    batcher=self._name,
                    size=len(items),
                    attempt=attempt,
                    error=f"{type(error).__name__}: {error}",
                )
            delay = min(5.0, 0.1 * 2 ** min(attempt, 10)) * (0.5 + random.random() / 2)
            self._waiting_out += 1
            try:  # a stop ends the wait: one more try, and the batch fails if it must
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            finally:
                self._waiting_out -= 1

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._outlasting_outages([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, done in batch:  # our own close: the waiters' messages are redelivered
                done.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or (self._stopping.is_set() and is_outage(exc)):
                # Stopping in an outage: every item would meet it again, one by one (each try
                # as slow as a hung dependency makes it), and items after a failed one could
                # go through first. All go back to their handlers together.
                for _, done in batch:
                    _settle(done, exc)
                return
            log.warning(
                "batch_failed_retrying_one_by_one",
                batcher=self._name,
                size=len(batch),
                error=f"{type(exc).__name__}: {exc}",
            )
            for item, done in batch:
                try:
                    [result] = await self._outlasting_outages([item])
                except Exception as single:
                    _settle(done, single)
                else:
                    _settle(done, result)
        else:
            for (_, done), result in zip(batch, results, strict=True):
                _settle(done, result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
