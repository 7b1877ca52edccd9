"""Retrying the first connection to a dependency: a broker or database that is down when a
service starts must make it wait, not exit (Kubernetes would otherwise crash-loop every pod)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger(__name__)


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
) -> T:
    """Call `attempt` until it succeeds, sleeping with capped exponential backoff and jitter."""
    delay = first_delay
    failures = 0
    while True:
        try:
            return await attempt()
        # Drivers raise many types for "not reachable yet" (OSError, their own errors).
        except Exception as exc:
            failures += 1
            # Log the first failure and then every tenth, so a long outage stays readable.
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "dependency_unavailable",
                    dependency=what,
                    attempt=failures,
                    error=f"{type(exc).__name__}: {exc}",
                )
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, max_delay)
