"""Citizens' messages sent to ingress the way Meta sends them: signed, concurrent, and retried
with backoff while ingress answers anything but 200 (Meta retries for days)."""

from __future__ import annotations

import asyncio
import io
import random
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from civicline.simulator.signing import SIGNATURE_HEADER, sign
from civicline.simulator.webhooks import text_message_webhook

# Questions whose intent the router knows, so every message expects one reply.
QUESTIONS = (
    "투표소 위치 알려주세요",
    "避難所はどこですか",
    "How do I renew my passport?",
    "백신 접종 어디서 하나요?",
    "食料支援の申請方法を教えてください",
    "Where can I get a vaccine?",
)


@dataclass(frozen=True, slots=True)
class Webhook:
    body: bytes
    wamids: tuple[str, ...]


@dataclass
class TrafficLog:
    sent: list[Webhook] = field(default_factory=list)
    accepted: list[Webhook] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, 0 = no answer

    @property
    def accepted_wamids(self) -> set[str]:
        return {w for hook in self.accepted for w in hook.wamids}

    @property
    def sent_wamids(self) -> set[str]:
        return {w for hook in self.sent for w in hook.wamids}


def citizen_messages(count: int, *, citizens: int = 50, prefix: str = "8210") -> list[Webhook]:
    """`count` one-message webhooks from `citizens` different citizens."""
    hooks = []
    for i in range(count):
        body, wamid = text_message_webhook(
            wa_id=f"{prefix}{i % citizens:08d}", text=QUESTIONS[i % len(QUESTIONS)]
        )
        hooks.append(Webhook(body, (wamid,)))
    return hooks


async def deliver(
    url: str,
    secret: str,
    hooks: list[Webhook],
    *,
    concurrency: int = 16,
    rate: float | None = None,
    give_up_after: float = 120.0,
    log: TrafficLog | None = None,
) -> TrafficLog:
    """POST every webhook until it is answered 200 (or `give_up_after` seconds pass for it),
    starting at most `rate` new webhooks per second when given, so a run lasts long enough
    for a fault to land in the middle of it."""
    record = log or TrafficLog()
    pending: asyncio.Queue[Webhook | None] = asyncio.Queue()
    timeout = aiohttp.ClientTimeout(total=10)

    async def feed() -> None:
        for hook in hooks:
            pending.put_nowait(hook)
            if rate:
                await asyncio.sleep(1 / rate)
        for _ in range(concurrency):
            pending.put_nowait(None)

    async def worker(session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while (hook := await pending.get()) is not None:
            record.sent.append(hook)
            deadline = loop.time() + give_up_after
            delay = 0.05
            while loop.time() < deadline:
                status = await _post(session, url, secret, hook.body, timeout)
                record.statuses[status] += 1
                if status == 200:
                    record.accepted.append(hook)
                    break
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(feed(), *(worker(session) for _ in range(concurrency)))
    return record


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    secret: str,
    body: bytes,
    timeout: aiohttp.ClientTimeout,
) -> int:
    headers = {SIGNATURE_HEADER: sign(body, secret), "Content-Type": "application/json"}
    try:
        # A stream, not bytes: aiohttp warns that a large bytes body blocks the event loop.
        data = io.BytesIO(body)
        async with session.post(url, data=data, headers=headers, timeout=timeout) as answer:
            await answer.read()
            return answer.status
    except (aiohttp.ClientError, TimeoutError):
        return 0
