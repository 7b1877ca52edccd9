"""The audit service's query API served over real HTTP against a real database, for tests: the
same routes, middleware, BatchWriter and keys as the service, without its AMQP consumer (the
end-to-end tests run the whole service). `ThreadedApi` serves it from a thread of its own, for
synchronous (Hypothesis) tests."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from civicline.audit.api import serve_standalone
from civicline.audit.privacy import PrivacyKeys
from support.audit_logs import run_audit_cli

PSEUDONYM_SECRET = "test-pseudonym-key-" + "p" * 32
MASTER_SECRET = "test-master-key-" + "m" * 32
KEYS = PrivacyKeys.from_secrets(PSEUDONYM_SECRET, MASTER_SECRET)
KEY_ENV = {"AUDIT_PSEUDONYM_KEY": PSEUDONYM_SECRET, "AUDIT_MASTER_KEY": MASTER_SECRET}


@dataclass(frozen=True, slots=True)
class RunningApi:
    url: str
    pool: asyncpg.Pool


@asynccontextmanager
async def serve_api(database_url: str) -> AsyncIterator[RunningApi]:
    async with serve_standalone(database_url, KEYS) as (url, pool):
        yield RunningApi(url, pool)


class ThreadedApi:
    """serve_api on an event loop in its own thread, so blocking clients can call it."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve_api(self._database_url) as running:
            self.url = running.url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedApi:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


async def create_token(database_url: str, name: str, role: str) -> str:
    """`civicline-audit token create`, as an operator runs it; returns the token it printed."""
    code, output = await run_audit_cli(
        "token",
        "create",
        "--name",
        name,
        "--role",
        role,
        env={"CIVICLINE_DATABASE_URL": database_url},
    )
    assert code == 0, output
    match = re.search(r"^(cvl_\S+)$", output, re.MULTILINE)
    assert match is not None, output
    return match.group(1)
