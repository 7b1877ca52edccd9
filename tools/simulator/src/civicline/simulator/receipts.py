"""Delivery receipts as Meta sends them: after each accepted message, a `sent`, a `delivered`
and a `read` status webhook, signed with the app secret and posted to the business's webhook
URL, in that order (reference §3, `value.statuses[]`).

Meta retries a webhook the endpoint did not accept; so do we, a few times with backoff, then
count it as undelivered (a local stand-in, not a week-long retry queue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from civicline.simulator.client import send_webhook
from civicline.simulator.state import RecordedSend
from civicline.simulator.webhooks import status_webhook

log = logging.getLogger(__name__)

# Each status and how long after Meta accepted the message it arrives: the citizen's phone is
# online, and they open the chat a little later.
DEFAULT_SCHEDULE: tuple[tuple[str, float], ...] = (
    ("sent", 0.1),
    ("delivered", 0.4),
    ("read", 2.0),
)


@dataclass
class ReceiptCounts:
    posted: int = 0  # status webhooks the endpoint answered with 2xx
    retried: int = 0  # attempts that failed and were tried again
    undelivered: int = 0  # status webhooks given up on


class Receipts:
    """Plays the statuses of accepted sends to `webhook_url`, signed with `secret`."""

    def __init__(
        self,
        webhook_url: str,
        secret: str,
        *,
        schedule: Sequence[tuple[str, float]] = DEFAULT_SCHEDULE,
        attempts: int = 5,
        first_backoff: float = 0.2,
    ) -> None:
        self.webhook_url = webhook_url
        self._secret = secret
        self._schedule = tuple(schedule)
        self._attempts = attempts
        self._first_backoff = first_backoff
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts = ReceiptCounts()

    def schedule(self, send: RecordedSend) -> None:
        """Start the statuses of one accepted send (call right after accepting it)."""
        if send.wamid is None or send.to is None:
            return
        task = asyncio.create_task(
            self._play(send.wamid, send.to, send.phone_number_id, send.callback_data)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play(
        self, wamid: str, recipient: str, phone_number_id: str, callback_data: str | None
    ) -> None:
        loop = asyncio.get_running_loop()
        accepted_at = loop.time()
        for status, after in self._schedule:
            await asyncio.sleep(max(0.0, accepted_at + after - loop.time()))
            body = status_webhook(
                wamid=wamid,
                status=status,
                recipient_id=recipient,
                phone_number_id=phone_number_id,
                callback_data=callback_data,
            )
            # In order: a status goes only once the one before it was delivered or given up.
            await self._post(body, status, wamid)

    async def _post(self, body: bytes, status: str, wamid: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        for attempt in range(self._attempts):
            try:
                answer = await send_webhook(
                    self.webhook_url, body, self._secret, session=self._session
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                answer, error = 0, f"{type(exc).__name__}: {exc}"
            else:
                error = f"HTTP {answer}"
            if 200 <= answer < 300:
                self.counts.posted += 1
                return
            if attempt + 1 < self._attempts:
                self.counts.retried += 1
                await asyncio.sleep(self._first_backoff * 2**attempt)
        self.counts.undelivered += 1
        log.warning("gave up on the %s status of %s: %s", status, wamid, error)

    async def close(self) -> None:
        """Stop playing: statuses not yet posted are dropped, as when the simulator stops."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
