"""Which failures mean "a dependency is unavailable, wait and try again" and which mean "this
message is bad" or "this is a bug".

Only outages are retried in place: a constraint violation or a type error retried forever would
hide a bug and block a queue, so those go through the queue's delivery limit instead.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

T = TypeVar("T")
log = structlog.get_logger(__name__)


class DependencyUnavailable(Exception):
    """RabbitMQ, Postgres or another dependency cannot be reached right now."""


class UpstreamPaused(DependencyUnavailable):
    """Work waits, as in an outage, on something people outside must fix (Meta refuses the
    sender's token or number). Every replica waits alike and restarting none of them helps, so
    the process stays ready, and keeps serving what does not need it."""


_POSTGRES_OUTAGES = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01: the server is stopping
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
)


def is_outage(exc: BaseException) -> bool:
    """True when `exc` says a dependency is unreachable, not that the work is wrong."""
    if isinstance(exc, (DependencyUnavailable, *_POSTGRES_OUTAGES, OSError, TimeoutError)):
        return True
    # asyncpg reports work on a connection that died as InterfaceError("connection is closed");
    # other InterfaceErrors are programming errors.
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


async def outlast_outage(operation: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run `operation`, retrying in place for as long as a dependency is unavailable.

    For a write that must follow an effect already done outside (a message Meta accepted):
    giving up there would lose the knowledge that it happened.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_outage(exc):
                raise
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning("waiting_for_dependency", what=what, attempt=attempt, error=str(exc))
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(attempt, 10)) * (0.5 + random.random() / 2))


def cancelled_from_below() -> bool:
    """For a CancelledError just caught: True when nobody cancelled the running task, so the
    error came from a library cancelling a task of its own under it (aiormq cancels its
    channel calls when a channel or connection closes). That is a failed call, not a request
    to stop, and is handled like one."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


# Seconds one step of a shutdown that talks to a dependency (cancel a consumer, close a
# channel, the pool, the connection) may take before it is given up.
SHUTDOWN_STEP_TIMEOUT = 5.0


async def shutdown_step(
    what: str, step: Awaitable[object], *, timeout: float = SHUTDOWN_STEP_TIMEOUT
) -> bool:
    """Await one step of a shutdown for at most `timeout` seconds; True if it completed.

    A step that fails, hangs (a black-holed broker answers nothing) or is cancelled from below
    is logged and the shutdown goes on: the steps after it (closing the pool, the connection)
    must still run, or the process outlives its grace period."""
    try:
        async with asyncio.timeout(timeout):
            await step
    except asyncio.CancelledError:
        if not cancelled_from_below():
            raise
        log.warning("shutdown_step_cancelled", step=what)
    except Exception as exc:
        log.warning("shutdown_step_failed", step=what, error=f"{type(exc).__name__}: {exc}")
    else:
        return True
    return False
