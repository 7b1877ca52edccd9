"""Meta's throughput limit, kept by every responder replica together.

A business number may send up to its limit (80 messages/s by default, up to 1,000 after
Meta's upgrade) counting all replicas: three replicas must not send 3 × 80. The schedule lives
in Postgres (table `send_rate`): each replica reserves a few evenly spaced send slots at a time
(a GCRA with no burst), so no one-second window holds more than the limit, and waits for its
slot. A throughput error (4, 80007, 130429, 131048) doubles the spacing and pushes the next
slot back a second; the slowdown halves every ten seconds after that, so a surge queues in
RabbitMQ instead of failing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter

from civicline.responder.graph import GraphClient, GraphError, SendResult

log = structlog.get_logger(__name__)

THROTTLED = Counter("civicline_responder_throttled_total", "Throughput errors from Meta")

# Slots are spaced for this share of the configured limit, so jitter between our clock and
# Meta's never puts one message too many into a second.
HEADROOM = 0.95
# Slots reserved per round trip to Postgres: fewer round trips, while a replica that stops
# sending wastes at most this many slots (or 50 ms of the limit, when that is more).
RESERVATION = 8
# How late after its slot a send may still go (see SendSchedule.wait_for_slot).
MAX_LATENESS = 0.025
PENALTY_SECONDS = 1.0
MAX_SLOWDOWN = 16.0
RECOVERY_HALF_LIFE_SECONDS = 10.0


def slot_times(start: datetime, spacing: float, count: int) -> list[float]:
    """Unix times of `count` send slots from `start`, `spacing` seconds apart."""
    first = start.timestamp()
    return [first + i * spacing for i in range(count)]


class SendSchedule:
    """Hands out send slots per business number, reserved in Postgres."""

    def __init__(self, pool: asyncpg.Pool, *, rate: float) -> None:
        self._pool = pool
        self._interval = 1.0 / (rate * HEADROOM)
        self._reservation = max(RESERVATION, int(rate * HEADROOM * 0.05))
        self._slots: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._last: dict[str, float] = collections.defaultdict(float)
        self._epochs: dict[str, int] = collections.defaultdict(int)

    async def wait_for_slot(self, phone_number_id: str) -> None:
        """Return at this replica's next slot of the shared schedule.

        Each waiter takes its slot in turn and sleeps until it on its own, so many sends are
        in flight at once. A sender that wakes within MAX_LATENESS of its slot goes: slots are
        spaced for 95 % of the limit, so shifting some by up to 25 ms still fits every
        one-second window. One woken later (a stalled event loop) must not go together with
        the senders behind it: it keeps at least one interval from this replica's previous
        send, as a fully serialised sender would.
        """
        lock = self._locks[phone_number_id]
        while True:
            async with lock:
                slots = self._slots[phone_number_id]
                # A slot left unused is lost capacity, never a reason to burst.
                while slots and slots[0] < time.time() - MAX_LATENESS:
                    slots.popleft()
                if not slots:
                    slots.extend(await self._reserve(phone_number_id, self._reservation))
                send_at = slots.popleft()
                epoch = self._epochs[phone_number_id]
            if (delay := send_at - time.time()) > 0:
                await asyncio.sleep(delay)
            if time.time() - send_at > MAX_LATENESS:
                async with lock:
                    gap = self._last[phone_number_id] + self._interval - time.time()
                    if gap > 0:
                        await asyncio.sleep(gap)
                    self._last[phone_number_id] = time.time()
            else:
                self._last[phone_number_id] = max(self._last[phone_number_id], time.time())
            if self._epochs[phone_number_id] == epoch:
                return
            # Meta throttled us while we waited: this slot is void, take one from the new,
            # slower schedule.

    async def _reserve(self, phone_number_id: str, count: int) -> list[float]:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "INSERT INTO send_rate (phone_number_id) VALUES ($1) ON CONFLICT DO NOTHING",
                phone_number_id,
            )
            row = await connection.fetchrow(
                """WITH current AS (
                       SELECT greatest(next_slot, clock_timestamp()) AS start,
                              greatest(1.0, slowdown * power(0.5,
                                  extract(epoch FROM clock_timestamp()
                                                    - coalesce(slowed_at, clock_timestamp()))
                                  / $4)) AS factor
                       FROM send_rate WHERE phone_number_id = $1 FOR UPDATE)
                   UPDATE send_rate SET
                       next_slot = current.start
                                   + make_interval(secs => $2 * $3 * current.factor)
                   FROM current WHERE send_rate.phone_number_id = $1
                   RETURNING current.start AS start, $3 * current.factor AS spacing""",
                phone_number_id,
                float(count),
                self._interval,
                RECOVERY_HALF_LIFE_SECONDS,
            )
        assert row is not None
        return slot_times(row["start"], row["spacing"], count)

    async def slow_down(self, phone_number_id: str) -> None:
        """Meta said we send too fast: space slots further apart and pause a moment."""
        THROTTLED.inc()
        self._slots[phone_number_id].clear()
        self._epochs[phone_number_id] += 1
        await self._pool.execute(
            """UPDATE send_rate SET
                   slowdown = least($2, greatest(1.0, slowdown) * 2),
                   slowed_at = clock_timestamp(),
                   next_slot = greatest(next_slot, clock_timestamp())
                               + make_interval(secs => $3)
               WHERE phone_number_id = $1""",
            phone_number_id,
            MAX_SLOWDOWN,
            PENALTY_SECONDS,
        )
        log.warning("throughput_limited_by_meta", phone_number_id=phone_number_id)


class RateLimitedSender:
    """A GraphClient whose sends take slots of the shared schedule."""

    def __init__(self, graph: GraphClient, schedule: SendSchedule) -> None:
        self._graph = graph
        self._schedule = schedule

    async def wait_for_slot(self, phone_number_id: str) -> None:
        await self._schedule.wait_for_slot(phone_number_id)

    async def send_now(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        """Send in the slot `wait_for_slot` gave; a throughput error slows the schedule."""
        try:
            return await self._graph.send(phone_number_id, message)
        except GraphError as exc:
            if exc.throttle:
                await self._schedule.slow_down(phone_number_id)
            raise

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        await self.wait_for_slot(phone_number_id)
        return await self.send_now(phone_number_id, message)
