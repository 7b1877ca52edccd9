"""Sending campaigns: the driver that starts, expands and completes them, the consumer of
their send jobs, and the consumer of delivery statuses.

A job is a chunk of recipients, sent in waves: a wave takes a broadcast slot of the number's
schedule for each recipient, claims them in Postgres in one transaction (with the
messaging-tier check) just before their slots come, sends each at its slot's time, and
records and publishes each outcome; several jobs' waves are in flight at once (bounded),
unlike the one-at-a-time answers to one citizen. Outcomes of concurrent sends are written in
small batches, so a thousand sends a second are a few dozen transactions; a responder killed
mid-campaign leaves in doubt only the wave(s) in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Counter

from civicline.common.amqp import (
    MessageHandler,
    PoisonMessage,
    Publisher,
    delivery_id,
    retry_attempt,
)
from civicline.common.batching import Batcher as CommonBatcher
from civicline.common.envelope import Envelope, EnvelopeError, utc_now
from civicline.common.failures import outlast_outage
from civicline.common.topology import (
    BROADCAST_FAILED,
    BROADCAST_IN_DOUBT,
    BROADCAST_SENT,
    BROADCAST_SKIPPED,
    RESPONDER_BROADCASTS,
    RESPONDER_STATUSES,
)
from civicline.responder import campaign_store as store
from civicline.responder.campaigns import (
    Job,
    chunks,
    delivery_event,
    recipient_event,
    template_message,
)
from civicline.responder.graph import GraphError
from civicline.responder.throttle import BroadcastSender, Slot

log = structlog.get_logger(__name__)

MISSING_RETRIES = 3
# Delivery statuses joined to campaign recipients per transaction, at most.
STATUS_BATCH = 128
MISSING_PAUSES = (0.02, 0.1, 0.3)
# While campaigns run, the driver looks this often whether their tables need new statistics.
STATISTICS_INTERVAL = 1.0
BROADCASTS = Counter("civicline_broadcast_sends_total", "Campaign send outcomes", ["outcome"])

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")


class Batcher(Generic[K, I, R]):
    """Groups concurrent single-item writes with the same key into one call of `flush(key,
    items) -> results` (same order): callers wait for their own result, or its exception."""

    def __init__(
        self,
        flush: Callable[[K, list[I]], Awaitable[Sequence[R]]],
        *,
        max_items: int = 64,
        linger: float = 0.005,
    ) -> None:
        self._flush = flush
        self._max = max_items
        self._linger = linger
        self._pending: dict[K, list[tuple[I, asyncio.Future[R]]]] = {}
        self._timers: dict[K, asyncio.Task[None]] = {}

    async def submit(self, key: K, item: I) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(key, [])
        pending.append((item, future))
        if len(pending) >= self._max:
            self._start(key)
        elif key not in self._timers:
            self._timers[key] = asyncio.create_task(self._after_linger(key))
        return await future

    async def _after_linger(self, key: K) -> None:
        await asyncio.sleep(self._linger)
        self._timers.pop(key, None)
        self._start(key)

    def _start(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        batch = self._pending.pop(key, [])
        if batch:
            # Its own task: a caller cancelled while waiting must not cancel the others' write.
            asyncio.get_running_loop().create_task(self._run(key, batch))

    async def _run(self, key: K, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush(key, [item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


@dataclass
class _Campaigns:
    """Campaigns as the senders see them, re-read at most every `ttl` seconds: a pause or a
    cancel reaches the senders this fast (and the claim checks it in any case)."""

    pool: asyncpg.Pool
    ttl: float = 0.5

    def __post_init__(self) -> None:
        self._cache: dict[uuid.UUID, tuple[float, store.Campaign | None]] = {}

    async def get(self, campaign_id: uuid.UUID) -> store.Campaign | None:
        now = asyncio.get_running_loop().time()
        cached = self._cache.get(campaign_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        campaign = await store.get(self.pool, campaign_id)
        self._cache[campaign_id] = (now, campaign)
        return campaign


def broadcast_handler(
    pool: asyncpg.Pool,
    publisher: Publisher,
    sender: BroadcastSender,
    *,
    wave_size: int,
    tier: int | None,
) -> MessageHandler:
    """Send jobs: each job's recipients go in waves of `wave_size`, their sends concurrent;
    with several jobs in flight (the prefetch), that many Graph API calls at most."""
    campaigns = _Campaigns(pool)

    async def settle_batch(campaign_id: uuid.UUID, outcomes: list[store.Outcome]) -> list[None]:
        await store.settle(pool, campaign_id, outcomes)
        return [None] * len(outcomes)

    settles: Batcher[uuid.UUID, store.Outcome, None] = Batcher(settle_batch)

    async def mark_batch(campaign_id: uuid.UUID, requests: list[tuple[str, str]]) -> list[bool]:
        marked = await store.mark_sending(pool, campaign_id, requests)
        return [wa_id in marked for wa_id, _ in requests]

    # Short linger: the mark is the last thing before a call whose slot has come.
    markings: Batcher[uuid.UUID, tuple[str, str], bool] = Batcher(mark_batch, linger=0.003)

    async def handle(message: AbstractIncomingMessage) -> None:
        try:
            job = Job.from_payload(Envelope.decode(message.body).payload)
        except (EnvelopeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise PoisonMessage(f"not a broadcast job: {exc!r}") from None
        campaign = await campaigns.get(job.campaign_id)
        if campaign is None or campaign.state in ("completed", "cancelled"):
            return
        if campaign.state != "running":
            await publisher.retry_later(message, RESPONDER_BROADCASTS, 1)
            return
        claimer = delivery_id.get() or uuid.uuid4().hex
        outcomes: list[str] = []
        for wave in chunks(job.recipients, wave_size):
            current = await campaigns.get(job.campaign_id)
            if current is None or current.state != "running":
                outcomes.append("halted")  # paused or cancelled: within half a second
                break
            outcomes += await send_wave(current, wave, claimer)
        # Recipients still missing after a few looks were expanded again in another job.
        waiting = {"deferred", "retry", "in_progress"}
        if retry_attempt(message) < MISSING_RETRIES:
            waiting.add("missing")
        if waiting & set(outcomes):
            # Over the messaging tier, Meta asked us to come back, or another sender's claim
            # is still live (a responder that died mid-call: its lease runs out): the job
            # returns from a delay queue, and its recipients already settled are not sent
            # again.
            attempt = retry_attempt(message) + 1
            await publisher.retry_later(message, RESPONDER_BROADCASTS, attempt)
            log.info(
                "broadcast_job_retry_later",
                campaign_id=str(job.campaign_id),
                attempt=attempt,
                outcomes={o: outcomes.count(o) for o in set(outcomes)},
            )
        elif "halted" in outcomes:
            refreshed = await store.get(pool, job.campaign_id)
            if refreshed is not None and refreshed.state == "paused":
                await publisher.retry_later(message, RESPONDER_BROADCASTS, 1)

    async def send_wave(
        campaign: store.Campaign, wave: Sequence[tuple[str, str]], claimer: str
    ) -> list[str]:
        """Claim the wave's recipients in one transaction, take a slot for each claimed one,
        then send each at its slot's time (the claim's latency never makes a slot late)."""
        pnid = campaign.spec.phone_number_id
        requests = [(wa_id, claimer) for wa_id, _ in wave]
        claims = await store.claim(pool, campaign.id, requests, tier=tier)
        for pause in MISSING_PAUSES:
            if all(claim.kind != "missing" for claim in claims.values()):
                break
            # The job overtook its expansion's commit (published just before it): look again
            # in a moment; our own claims from the first look come back as ours.
            await asyncio.sleep(pause)
            claims = await store.claim(pool, campaign.id, requests, tier=tier)
        unused = Slot(0.0, -1, 0.0)  # not sent: no slot taken
        slots = [
            await sender.next_slot(pnid) if claims[wa_id].kind == "claimed" else unused
            for wa_id, _ in wave
        ]
        # Every send of the wave finishes before the job goes on, is retried or fails: a
        # retry must never run beside sends of the attempt before it.
        results = await asyncio.gather(
            *(
                send_claimed(campaign, wa_id, language, claims[wa_id], slot, claimer)
                for (wa_id, language), slot in zip(wave, slots, strict=True)
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, str)]

    async def send_claimed(
        campaign: store.Campaign,
        wa_id: str,
        language: str,
        claim: store.Claim,
        slot: Slot,
        claimer: str,
    ) -> str:
        if claim.kind != "claimed":
            await _report_settled(publisher, campaign.id, wa_id, claim)
            return claim.kind
        pnid = campaign.spec.phone_number_id
        while not await sender.wait_until(pnid, slot):
            slot = await sender.next_slot(pnid)
        # From here a crash leaves the recipient in doubt; before, it is claimed again.
        if not await markings.submit(campaign.id, (wa_id, claimer)):
            return "halted"  # cancelled since the claim
        message = template_message(campaign.id, campaign.spec, wa_id, language)
        try:
            result = await sender.send_now(pnid, message, slot)
        except GraphError as exc:
            return await _not_sent(campaign, wa_id, language, exc)
        # Meta has it: only an outage may delay the record, never lose it.
        await outlast_outage(
            lambda: settles.submit(campaign.id, store.Outcome(wa_id, "sent", result.wamid)),
            what="campaign recipients",
        )
        await publisher.publish_envelope(
            recipient_event(
                BROADCAST_SENT,
                campaign.id,
                wa_id,
                utc_now(),
                {
                    "wamid": result.wamid,
                    "language": language,
                    "template": campaign.spec.template,
                },
            )
        )
        BROADCASTS.labels("sent").inc()
        return "sent"

    async def _not_sent(
        campaign: store.Campaign, wa_id: str, language: str, exc: GraphError
    ) -> str:
        if exc.ambiguous:
            # Meta may have it: the claim stays, and the recipient is reported, not resent.
            await settles.submit(campaign.id, store.Outcome(wa_id, "in_doubt"))
            await publisher.publish_envelope(
                recipient_event(
                    BROADCAST_IN_DOUBT, campaign.id, wa_id, utc_now(), {"reason": "timeout"}
                )
            )
            BROADCASTS.labels("in_doubt").inc()
            return "in_doubt"
        if exc.pauses:
            # The sender cannot send at all (its token, its number): the recipient is queued
            # again and the job waits in its delay queue until people fix it.
            await settles.submit(campaign.id, store.Outcome(wa_id, "queued"))
            BROADCASTS.labels("paused").inc()
            log.warning("broadcast_sender_paused", campaign_id=str(campaign.id), error=str(exc))
            return "retry"
        if exc.retryable:
            await settles.submit(campaign.id, store.Outcome(wa_id, "queued"))
            BROADCASTS.labels("retry").inc()
            log.info("broadcast_send_retry_later", campaign_id=str(campaign.id), error=str(exc))
            return "retry"
        await settles.submit(campaign.id, store.Outcome(wa_id, "failed", error_code=exc.code))
        await publisher.publish_envelope(
            recipient_event(
                BROADCAST_FAILED,
                campaign.id,
                wa_id,
                utc_now(),
                {
                    "error": exc.as_payload(),
                    "language": language,
                    "template": campaign.spec.template,
                },
            )
        )
        BROADCASTS.labels("failed").inc()
        log.warning("broadcast_failed", campaign_id=str(campaign.id), error=str(exc))
        return "failed"

    return handle


async def _report_settled(
    publisher: Publisher, campaign_id: uuid.UUID, wa_id: str, claim: store.Claim
) -> None:
    """A redelivered job meets recipients settled before: publish their outcome again (same
    event id), since the earlier attempt may have stopped between the record and the publish."""
    now = utc_now()
    event: Envelope | None = None
    if claim.kind == "in_doubt" or (claim.kind == "done" and claim.state == "in_doubt"):
        event = recipient_event(
            BROADCAST_IN_DOUBT, campaign_id, wa_id, now, {"reason": "send_outcome_unknown"}
        )
        if claim.kind == "in_doubt":
            BROADCASTS.labels("in_doubt").inc()
    elif claim.kind == "skipped" or (claim.kind == "done" and claim.state == "skipped"):
        event = recipient_event(
            BROADCAST_SKIPPED, campaign_id, wa_id, now, {"reason": claim.reason}
        )
        BROADCASTS.labels("skipped").inc()
    elif claim.kind == "done" and claim.wamid is not None:
        event = recipient_event(BROADCAST_SENT, campaign_id, wa_id, now, {"wamid": claim.wamid})
    elif claim.kind == "done" and claim.state == "failed":
        error = {"code": claim.error_code, "http_status": None, "message": None}
        event = recipient_event(BROADCAST_FAILED, campaign_id, wa_id, now, {"error": error})
    if event is not None:
        await publisher.publish_envelope(event)


@dataclass(frozen=True, slots=True)
class _Status:
    update: store.StatusUpdate
    occurred_at: datetime
    errors: object


def status_batcher(
    pool: asyncpg.Pool, publisher: Publisher
) -> CommonBatcher[_Status, store.StatusJoin]:
    """Statuses joined to campaign recipients in batches (three per reply arrive, nearly all
    of replies): one transaction per batch, the `broadcast.status.<state>` events published
    before it commits, so a failed publish leaves the statuses to be applied again."""

    async def join(batch: Sequence[_Status]) -> list[store.StatusJoin]:
        async with pool.acquire() as connection, connection.transaction():
            joins = await store.apply_statuses(connection, [s.update for s in batch])
            events = [
                delivery_event(
                    j.match.campaign_id,
                    j.match.wa_id,
                    s.update.wamid,
                    s.update.status,
                    s.occurred_at,
                    s.errors,
                )
                for s, j in zip(batch, joins, strict=True)
                if j.match is not None and j.match.state is not None
            ]
            outcomes = await asyncio.gather(
                *(publisher.publish_envelope(e) for e in events), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return joins

    return CommonBatcher(join, size=STATUS_BATCH, linger=0, name="campaign-statuses")


def status_handler(
    publisher: Publisher, batcher: CommonBatcher[_Status, store.StatusJoin]
) -> MessageHandler:
    """Join Meta's delivery statuses to campaign recipients by wamid (statuses of replies are
    left alone) and publish `broadcast.status.<state>`."""

    async def handle(message: AbstractIncomingMessage) -> None:
        try:
            envelope = Envelope.decode(message.body)
            wamid = envelope.payload["wamid"]
            status = envelope.payload["status"]
            recipient = envelope.payload.get("recipient_id")
        except (EnvelopeError, KeyError, TypeError) as exc:
            raise PoisonMessage(f"not a status event: {exc!r}") from None
        if not isinstance(wamid, str) or not isinstance(status, str):
            raise PoisonMessage("status event without wamid or status")
        errors = envelope.payload.get("errors")
        update = store.StatusUpdate(
            wamid,
            status,
            _first_error_code(errors),
            recipient if isinstance(recipient, str) else None,
        )
        joined = await batcher.submit(_Status(update, envelope.occurred_at, errors))
        # Meta can report a send before our record of it has its wamid: look again soon.
        if joined.match is None and joined.pending and retry_attempt(message) < 3:
            await publisher.retry_later(message, RESPONDER_STATUSES, retry_attempt(message) + 1)

    return handle


def _first_error_code(errors: object) -> int | None:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        return code if isinstance(code, int) and not isinstance(code, bool) else None
    return None


class Driver:
    """Starts due campaigns, expands their audiences page by page onto the bus, and marks them
    completed; runs in every replica, each campaign row locked by one at a time."""

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, *, idle: float = 0.5) -> None:
        self._pool = pool
        self._publisher = publisher
        self._idle = idle
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._statistics_at = -STATISTICS_INTERVAL
        self._statistics: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="campaign-driver")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        for task in (self._task, self._statistics):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            progressed = False
            try:
                for campaign_id in await store.due_campaigns(self._pool):
                    self._refresh_statistics()
                    while await store.step(self._pool, self._publisher, campaign_id):
                        progressed = True
                        self._refresh_statistics()
            except Exception as exc:  # an outage or a bug: log, wait, try again
                log.warning("campaign_driver_error", error=f"{type(exc).__name__}: {exc}")
            if not progressed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle)

    def _refresh_statistics(self) -> None:
        """A campaign's recipients grow from none to its whole audience in a minute: claims
        planned from the statistics of a few rows would read all of them. The analysis runs
        beside the driver, one at a time, so a slow or failing one never holds a campaign."""
        now = asyncio.get_running_loop().time()
        running = self._statistics is not None and not self._statistics.done()
        if running or now - self._statistics_at < STATISTICS_INTERVAL:
            return
        self._statistics_at = now
        self._statistics = asyncio.create_task(self._analyse(), name="campaign-statistics")

    async def _analyse(self) -> None:
        try:
            analysed = await store.refresh_statistics(self._pool)
        except Exception as exc:  # an outage, or the migration not applied yet: next time
            log.warning("campaign_statistics_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            if analysed:
                log.info("campaign_statistics_refreshed", tables=analysed)
