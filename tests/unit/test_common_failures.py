"""Which failures are outages (wait and retry in place) and which are bugs or bad input."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from civicline.common.amqp import PublishFailed
from civicline.common.failures import (
    cancelled_from_below,
    is_outage,
    outlast_outage,
    shutdown_step,
)


@pytest.mark.parametrize(
    "exc",
    [
        PublishFailed("broker connection is not open"),
        ConnectionRefusedError(),
        ConnectionResetError(),
        OSError("network unreachable"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle of operation"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.InterfaceError("connection is closed"),
    ],
)
def test_outages(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.CheckViolationError("check"),
        asyncpg.exceptions.UntranslatableCharacterError("\\u0000"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        TypeError("bug"),
        KeyError("payload"),
        ValueError("bad"),
    ],
)
def test_bugs_and_bad_data_are_not_outages(exc: BaseException) -> None:
    assert not is_outage(exc)


async def test_outlast_outage_retries_outages_and_returns_the_result() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError
        return "written"

    assert await outlast_outage(flaky, what="test") == "written"
    assert calls == 3


async def test_outlast_outage_lets_a_bug_through_at_once() -> None:
    async def broken() -> None:
        raise asyncpg.exceptions.UniqueViolationError("duplicate key")

    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        await outlast_outage(broken, what="test")


async def library_task_cancelled_under_us() -> None:
    """What awaiting an aiormq channel call looks like when the channel closes meanwhile."""
    inner = asyncio.ensure_future(asyncio.sleep(10))
    asyncio.get_running_loop().call_soon(inner.cancel)
    await inner


async def test_a_shutdown_step_that_hangs_fails_and_the_shutdown_goes_on() -> None:
    hang = asyncio.Event()
    assert await shutdown_step("wait for a silent broker", hang.wait(), timeout=0.05) is False


async def test_a_shutdown_step_that_raises_or_is_cancelled_from_below_fails_quietly() -> None:
    async def broken() -> None:
        raise ConnectionResetError("gone")

    assert await shutdown_step("close a dead channel", broken(), timeout=5) is False
    assert (
        await shutdown_step("cancel a consumer", library_task_cancelled_under_us(), timeout=5)
        is False
    )
    assert await shutdown_step("close the pool", asyncio.sleep(0), timeout=5) is True


async def test_stopping_the_task_itself_still_stops_it_mid_step() -> None:
    async def shutdown() -> None:
        await shutdown_step("a long drain", asyncio.sleep(10), timeout=30)

    task = asyncio.create_task(shutdown())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_only_a_cancellation_nobody_asked_for_counts_as_from_below() -> None:
    seen: list[bool] = []
    try:
        await library_task_cancelled_under_us()
    except asyncio.CancelledError:
        seen.append(cancelled_from_below())
    assert seen == [True]

    async def stopped() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append(cancelled_from_below())
            raise

    task = asyncio.create_task(stopped())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [True, False]
