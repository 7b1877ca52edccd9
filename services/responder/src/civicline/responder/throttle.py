"""Meta's throughput limit, kept by every responder replica together.

A business number may send up to its limit (80 messages/s by default, up to 1,000 after
Meta's upgrade) counting all replicas: three replicas must not send 3 × 80. The schedule lives
in Postgres (table `send_rate`): each replica reserves a few evenly spaced send slots at a time
(a GCRA with no burst), so no one-second window holds more than the limit, and waits for its
slot. A throughput error (4, 80007, 130429, 131048) doubles the spacing and pushes the next
slot back a second, once per burst (see `slow_down`); the slowdown halves every ten seconds
after that, so a surge queues in RabbitMQ instead of failing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter

from civicline.responder.graph import GraphError, SendResult
from civicline.responder.pauses import PausingGraph, Sends

log = structlog.get_logger(__name__)

THROTTLED = Counter("civicline_responder_throttled_total", "Throughput errors from Meta")
MISSED_SLOTS = Counter(
    "civicline_responder_missed_slots_total", "Send slots given up because the send was late"
)

# Slots are spaced for this share of the configured limit, so a send's lateness (at most
# MAX_LATENESS) and its jitter on the way to Meta, up to ~10 % of a second together, never put
# one message too many into a second.
HEADROOM = 0.9
# Slots reserved per round trip to Postgres: fewer round trips, while a replica that stops
# sending wastes at most this many slots (or 50 ms of the limit, when that is more).
RESERVATION = 8
# How late after its slot a send may still go (see SendSchedule.go).
MAX_LATENESS = 0.05
# How long before its slot a reply is handed over for its ledger claim (RateLimitedSender).
CLAIM_LEAD = 0.05
# How long before its slot a waiter lets the next one take a slot (SendSchedule.take_slot).
HANDOVER = 0.1
PENALTY_SECONDS = 1.0
MAX_SLOWDOWN = 16.0
RECOVERY_HALF_LIFE_SECONDS = 10.0


def slot_times(start: datetime, spacing: float, count: int) -> list[float]:
    """Unix times of `count` send slots from `start`, `spacing` seconds apart."""
    first = start.timestamp()
    return [first + i * spacing for i in range(count)]


@dataclass(frozen=True, slots=True)
class Reservation:
    """Slots taken from the schedule in one round trip, and when (Postgres's clock)."""

    times: list[float]
    reserved_at: float


@dataclass(frozen=True, slots=True)
class Slot:
    at: float  # Unix time the send is due
    epoch: int  # the schedule's throttling epoch it was given in
    # When it was taken from the schedule (Postgres's clock, as the slowdowns' times): a send
    # Meta refuses for going too fast slows the schedule only if no slowdown came since.
    reserved_at: float
    # A campaign slot's reservation from the broadcast gate, a schedule of its own.
    gate_reserved_at: float | None = None


class SendSchedule:
    """Hands out send slots per business number, reserved in Postgres."""

    def __init__(self, pool: asyncpg.Pool, *, rate: float) -> None:
        self._pool = pool
        self._interval = 1.0 / (rate * HEADROOM)
        self._reservation = max(RESERVATION, int(rate * HEADROOM * 0.05))
        # (due, reserved at) of the slots this replica holds, per number.
        self._slots: dict[str, collections.deque[tuple[float, float]]] = collections.defaultdict(
            collections.deque
        )
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._epochs: dict[str, int] = collections.defaultdict(int)

    async def wait_for_slot(self, phone_number_id: str) -> Slot:
        """Return at this replica's next slot of the shared schedule, ready to send: the
        slot."""
        while True:
            slot = await self.take_slot(phone_number_id)
            if self.go(phone_number_id, slot):
                return slot

    async def take_slot(self, phone_number_id: str, *, early: float = 0.0) -> Slot:
        """This replica's next slot, returned `early` seconds before it is due.

        Waiters take slots one at a time, in turn: each holds the number's lock until
        HANDOVER before its slot, then sleeps the rest on its own. So sends go out in the
        evenly spaced slots however late any one waiter wakes (the next slot is not counted
        from the last send), while at most HANDOVER's worth of slots is ever taken and not yet
        used: all that a throughput error voids, or a crash wastes. Call `go` right before
        sending in the slot.
        """
        async with self._locks[phone_number_id]:
            slots = self._slots[phone_number_id]
            # A slot left unused is lost capacity, never a reason to burst.
            while slots and slots[0][0] < time.time() - MAX_LATENESS:
                slots.popleft()
            while not slots:
                epoch = self._epochs[phone_number_id]
                reserved = await self._reserve(phone_number_id, self._reservation)
                # Meta throttled us while they were reserved: they may be from before the
                # penalty, and would go out in it under the new epoch. Reserve again.
                if epoch == self._epochs[phone_number_id]:
                    slots.extend((at, reserved.reserved_at) for at in reserved.times)
            at, reserved_at = slots.popleft()
            slot = Slot(at, self._epochs[phone_number_id], reserved_at)
            if (delay := slot.at - HANDOVER - time.time()) > 0:
                await asyncio.sleep(delay)
        if (delay := slot.at - early - time.time()) > 0:
            await asyncio.sleep(delay)
        return slot

    def go(self, phone_number_id: str, slot: Slot) -> bool:
        """Whether to send now in `slot`; False: the slot is void, take another.

        A send within MAX_LATENESS of its slot goes: slots are spaced for 90 % of the limit,
        so shifting each by up to 50 ms, plus the jitter of the way to Meta, still fits every
        one-second window. A later one (a stalled event loop, a slow write between slot and
        send) gives its slot up: sending late in it could bunch with the sends behind it, on
        this replica or another. So does a slot given before Meta throttled us.
        """
        if self._epochs[phone_number_id] != slot.epoch:
            return False
        if time.time() - slot.at > MAX_LATENESS:
            MISSED_SLOTS.inc()
            return False
        return True

    async def reserve(self, phone_number_id: str, count: int) -> Reservation:
        """The next `count` slots of the number, taken from the shared schedule (for a caller
        that spaces its own sends, like campaigns)."""
        return await self._reserve(phone_number_id, count)

    async def _reserve(self, phone_number_id: str, count: int) -> Reservation:
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
                   RETURNING current.start AS start, $3 * current.factor AS spacing,
                             clock_timestamp() AS reserved_at""",
                phone_number_id,
                float(count),
                self._interval,
                RECOVERY_HALF_LIFE_SECONDS,
            )
        assert row is not None
        return Reservation(
            slot_times(row["start"], row["spacing"], count), row["reserved_at"].timestamp()
        )

    async def slow_down(self, phone_number_id: str, *, reserved_at: float | None) -> None:
        """Meta said we send too fast: space slots further apart and pause a moment.

        Once per burst: the sends already on their way when Meta first objected come back
        with the same error, and each adding its own second and doubling would turn one
        burst into the full MAX_SLOWDOWN. So a send whose slot was reserved (`reserved_at`,
        Postgres's clock) before the latest slowdown of the number, by any replica, slows
        nothing more, however late it went; one reserved after it (Meta still objects to the
        slower pace) does. None: an error not tied to a slot, which always slows.
        """
        THROTTLED.inc()
        self._void(phone_number_id)
        slowed = await self._pool.fetchval(
            """UPDATE send_rate SET
                   slowdown = least($2, greatest(1.0, slowdown) * 2),
                   slowed_at = clock_timestamp(),
                   next_slot = greatest(next_slot, clock_timestamp())
                               + make_interval(secs => $3)
               WHERE phone_number_id = $1
                 AND ($4::float8 IS NULL OR slowed_at IS NULL OR slowed_at <= to_timestamp($4))
               RETURNING true""",
            phone_number_id,
            MAX_SLOWDOWN,
            PENALTY_SECONDS,
            reserved_at,
        )
        # Slots reserved while the UPDATE was on its way may predate it: void them as well.
        self._void(phone_number_id)
        if slowed:
            log.warning("throughput_limited_by_meta", phone_number_id=phone_number_id)

    def _void(self, phone_number_id: str) -> None:
        """Every slot this replica holds or is reserving for the number is void."""
        self._slots[phone_number_id].clear()
        self._epochs[phone_number_id] += 1


class RateLimitedSender:
    """A Graph API client whose sends take slots of the shared schedule."""

    def __init__(self, graph: PausingGraph, schedule: SendSchedule) -> None:
        self._graph = graph
        self._schedule = schedule

    def paused(self, phone_number_id: str) -> bool:
        """Meta refuses every send of the number and no probe is due (pauses.py)."""
        return self._graph.paused(phone_number_id)

    async def wait_for_slot(self, phone_number_id: str) -> Slot:
        """A slot, returned CLAIM_LEAD seconds before it is due: time for the caller's ledger
        write, which then happens just before the send instead of while waiting for it."""
        return await self._schedule.take_slot(phone_number_id, early=CLAIM_LEAD)

    async def send_now(
        self, phone_number_id: str, message: Mapping[str, Any], slot: Slot
    ) -> SendResult:
        """Send in `slot` (or, if it went void meanwhile, a fresh one); a throughput error
        slows the schedule."""
        if (early := slot.at - time.time()) > 0:
            await asyncio.sleep(early)
        while not self._schedule.go(phone_number_id, slot):
            slot = await self._schedule.take_slot(phone_number_id)
        try:
            return await self._graph.send(phone_number_id, message)
        except GraphError as exc:
            if exc.throttle:
                await self._schedule.slow_down(phone_number_id, reserved_at=slot.reserved_at)
            raise

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        slot = await self.wait_for_slot(phone_number_id)
        return await self.send_now(phone_number_id, message, slot)


class BroadcastSender:
    """Campaign sends: they take slots of the same per-number schedule as replies, but also of
    a gate of their own at the rate less the share reserved for replies.

    Both schedules live in Postgres, so the split holds across replicas: broadcasts can never
    fill the number's schedule, and a reply finds it at most a few reserved slots ahead of
    now — it is answered within a fraction of a second, not behind the campaign's backlog.

    Unlike replies, which wait for their slot one at a time, broadcasts reserve a batch of
    slots (50 ms worth) from both schedules in one round trip each; a send's time is the later
    of its two slots, so sends stay spaced by the larger interval. Many sends then wait for
    their own time concurrently, with no lock held while they sleep. A slot found more than
    `LATE_SLOT_SECONDS` in the past (the event loop was busy) is dropped, never used to
    catch up in a burst. A throughput error slows both schedules and voids reserved slots.
    """

    LATE_SLOT_SECONDS = 0.05
    BATCH_SECONDS = 0.05

    def __init__(
        self, graph: Sends, shared: SendSchedule, pool: asyncpg.Pool, *, broadcast_rate: float
    ) -> None:
        self._graph = graph
        self._shared = shared
        self._gate = SendSchedule(pool, rate=broadcast_rate)
        self._batch = max(RESERVATION, int(broadcast_rate * self.BATCH_SECONDS))
        # (due, reserved at in the shared schedule, in the gate) of the slots held, per number.
        self._slots: dict[str, collections.deque[tuple[float, float, float]]] = (
            collections.defaultdict(collections.deque)
        )
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._epochs: dict[str, int] = collections.defaultdict(int)

    @staticmethod
    def _gate_key(phone_number_id: str) -> str:
        return f"{phone_number_id}:broadcast"

    async def next_slot(self, phone_number_id: str) -> Slot:
        """The next broadcast slot; wait for it with `wait_until`."""
        async with self._locks[phone_number_id]:
            slots = self._slots[phone_number_id]
            while True:
                now = time.time()
                while slots and slots[0][0] < now - self.LATE_SLOT_SECONDS:
                    slots.popleft()
                if slots:
                    at, shared_at, gate_at = slots.popleft()
                    return Slot(at, self._epochs[phone_number_id], shared_at, gate_at)
                epoch = self._epochs[phone_number_id]
                gate = await self._gate.reserve(self._gate_key(phone_number_id), self._batch)
                shared = await self._shared.reserve(phone_number_id, self._batch)
                if epoch == self._epochs[phone_number_id]:
                    slots.extend(
                        (max(pair), shared.reserved_at, gate.reserved_at)
                        for pair in zip(gate.times, shared.times, strict=True)
                    )

    async def wait_until(self, phone_number_id: str, slot: Slot) -> bool:
        """Sleep until the slot's time; False if the slot is void — Meta throttled us
        meanwhile, or its time passed too long ago (a send that late could crowd the next
        second past the limit): take another."""
        delay = slot.at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -self.LATE_SLOT_SECONDS:
            return False
        return self._epochs[phone_number_id] == slot.epoch

    async def send_now(
        self, phone_number_id: str, message: Mapping[str, Any], slot: Slot
    ) -> SendResult:
        """Send in `slot` (`next_slot`'s, waited for); a throughput error slows the
        schedules."""
        try:
            return await self._graph.send(phone_number_id, message)
        except GraphError as exc:
            if exc.throttle:
                self._void(phone_number_id)
                await self._shared.slow_down(phone_number_id, reserved_at=slot.reserved_at)
                gate_at = slot.gate_reserved_at
                await self._gate.slow_down(
                    self._gate_key(phone_number_id),
                    reserved_at=slot.reserved_at if gate_at is None else gate_at,
                )
                self._void(phone_number_id)  # reserved while the slowdowns were on their way
            raise

    def _void(self, phone_number_id: str) -> None:
        self._epochs[phone_number_id] += 1
        self._slots[phone_number_id].clear()
