"""Which failures are outages (wait and retry in place) and which are bugs or bad input."""

from __future__ import annotations

import asyncpg
import pytest

from civicline.common.amqp import PublishFailed
from civicline.common.failures import is_outage, outlast_outage


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
