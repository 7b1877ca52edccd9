"""The per-number send schedule that every responder replica shares, on the real Postgres:
no one-second window ever holds more sends than the limit, and Meta's throttling slows it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from civicline.responder.throttle import HEADROOM, PENALTY_SECONDS, Reservation, SendSchedule
from support.isolation import Environment, EnvironmentFactory
from support.timing import busiest_second

pytestmark = pytest.mark.integration

NUMBER = "106512349876543"


def test_busiest_second_counts_sliding_windows() -> None:
    assert busiest_second([0.0, 0.5, 0.99, 1.0, 1.2]) == 4  # [0.5, 1.5)
    assert busiest_second([0.0, 1.0, 2.0]) == 1


@pytest.fixture(scope="module")
async def environment(environments: EnvironmentFactory) -> Environment:
    return await environments("schedule")


@pytest.fixture
async def pools(environment: Environment) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    first = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=4)
    second = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=4)
    await first.execute("DELETE FROM send_rate")
    yield first, second
    await first.close()
    await second.close()


async def test_two_replicas_together_never_exceed_the_limit(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    rate = 100
    replicas = [SendSchedule(pool, rate=rate) for pool in pools]
    granted: list[float] = []

    async def sender(schedule: SendSchedule) -> None:
        await schedule.wait_for_slot(NUMBER)
        granted.append(time.time())

    began = time.time()
    await asyncio.gather(*(sender(replicas[i % 2]) for i in range(250)))
    elapsed = time.time() - began

    assert busiest_second(granted) <= rate
    # ... and the limit is used, not wasted: 250 sends at 100/s take about 2.5 s.
    assert elapsed < 250 / rate * 1.5


async def test_meta_throttling_pauses_and_spaces_the_sends(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    schedule = SendSchedule(pools[0], rate=100)
    for _ in range(5):
        await schedule.wait_for_slot(NUMBER)
    throttled_at = time.time()
    await schedule.slow_down(NUMBER, reserved_at=None)
    slots = []
    for _ in range(10):
        slot = await schedule.wait_for_slot(NUMBER)
        assert time.time() >= slot.at - 0.005, "a send went before its slot"
        slots.append(slot.at)

    assert slots[0] - throttled_at >= PENALTY_SECONDS * 0.9
    # The slots themselves, not when each waiter woke: on a busy machine one waiter wakes a
    # few ms late and the next on time, which is the schedule working (the next slot is never
    # counted from the last send). Twice the normal spacing of 1/(100 × HEADROOM) s, less
    # the recovery that began at the slowdown (it halves every 10 s): still 1.5 times it
    # 4 s later, however slowly this test's second reservation comes.
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert min(gaps) >= 1.5 / (100 * HEADROOM)


class ThrottledWhileReserving(SendSchedule):
    """Meta's throttling error lands (another send's `slow_down`) while this replica's
    reservation is on its way back from Postgres, with the slots it took before the penalty."""

    throttled_at: float | None = None

    async def _reserve(self, phone_number_id: str, count: int) -> Reservation:
        reserved = await super()._reserve(phone_number_id, count)
        if self.throttled_at is None:
            self.throttled_at = time.time()
            await self.slow_down(phone_number_id, reserved_at=None)
        return reserved


async def test_slots_reserved_before_a_throttling_error_are_never_used_after_it(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    schedule = ThrottledWhileReserving(pools[0], rate=100)
    slot = await schedule.wait_for_slot(NUMBER)
    assert schedule.throttled_at is not None
    assert slot.at - schedule.throttled_at >= PENALTY_SECONDS * 0.9


async def test_a_burst_of_throttling_errors_slows_the_schedule_once(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    # Meta objects, and the sends already on their way all come back with 130429, on two
    # replicas: one slowdown (twice the spacing, one second's pause), not one per error. The
    # second replica's slots were reserved before the slowdown but fall due after it, as a
    # campaign's run ahead: still the same burst.
    replicas = [SendSchedule(pool, rate=100) for pool in pools]
    first = [await replicas[0].wait_for_slot(NUMBER) for _ in range(4)]
    ahead = await replicas[1].reserve(NUMBER, 4)
    await replicas[0].slow_down(NUMBER, reserved_at=first[0].reserved_at)
    assert min(ahead.times) < time.time() + 0.1  # due soon, when the penalty holds sends
    await asyncio.gather(
        *(replicas[0].slow_down(NUMBER, reserved_at=slot.reserved_at) for slot in first[1:]),
        *(replicas[1].slow_down(NUMBER, reserved_at=ahead.reserved_at) for _ in ahead.times),
    )

    async def state() -> tuple[float, float]:
        row = await pools[0].fetchrow(
            "SELECT slowdown, extract(epoch FROM next_slot - clock_timestamp()) AS pause"
            " FROM send_rate WHERE phone_number_id = $1",
            NUMBER,
        )
        assert row is not None
        return float(row["slowdown"]), float(row["pause"])

    slowdown, pause = await state()
    assert slowdown == 2.0
    assert PENALTY_SECONDS * 0.8 <= pause <= PENALTY_SECONDS * 1.1
    # A send reserved in the slower schedule that Meta still refuses slows it again.
    later = await replicas[1].wait_for_slot(NUMBER)
    await replicas[1].slow_down(NUMBER, reserved_at=later.reserved_at)
    assert (await state())[0] == 4.0
