"""One citizen's messages handled one at a time, in the order they arrived.

The router and responder queues have a single active consumer, so messages reach the active
process in the order they were published; the consumer then runs handlers concurrently. Each
handler takes its citizens' turns first thing, before any await, so turns are granted in
arrival order (asyncio locks are FIFO) and different citizens still run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class CitizenTurns:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, *citizens: str) -> AsyncIterator[None]:
        """Wait for the turn of every citizen named (a webhook may carry several), in sorted
        order so two handlers never wait on each other."""
        keys = sorted(set(citizens))
        for key in keys:
            lock, users = self._locks.get(key, (asyncio.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for key in keys:
                    await stack.enter_async_context(self._locks[key][0])
                yield
        finally:
            for key in keys:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
