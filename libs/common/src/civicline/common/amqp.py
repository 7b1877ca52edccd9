"""RabbitMQ I/O: one robust connection per process, a confirmed publisher, a consumer runner.

The publisher waits for the broker's confirm on every message (persistent, `mandatory`, returns
raise) within a timeout, so a caller that gets no exception knows the message is in a queue.
The consumer acks manually with a bounded prefetch and drains in-flight work on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from prometheus_client import Counter, Histogram
from yarl import URL

from civicline.common.acks import AckLedger, Acks
from civicline.common.envelope import CONTENT_TYPE, Envelope
from civicline.common.failures import (
    DependencyUnavailable,
    UpstreamPaused,
    cancelled_from_below,
    is_outage,
    shutdown_step,
)
from civicline.common.retry import retry_forever
from civicline.common.settings import redact_url
from civicline.common.topology import EXCHANGE, QueueSpec, declare, event_routing_key

log = structlog.get_logger(__name__)

CORRELATION_HEADER = "x-correlation-id"
KIND_HEADER = "x-civicline-kind"
# How many times this message was put back for a later retry (absent: never).
ATTEMPT_HEADER = "x-civicline-attempt"


# A fresh id for each delivery a consumer handles, stable across its in-place retries, so a
# handler can recognise a claim it wrote itself when the answer to that write was lost.
delivery_id: ContextVar[str] = ContextVar("delivery_id", default="")


# Headers the broker writes when it dead-letters or redelivers a message. A copy we publish
# (a delayed retry, a parked or replayed message) is a new message and leaves them out: since
# 3.13 x-headers from publishers are not the broker's to interpret, and a copy carrying the
# original's x-death would mix two histories.
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-", "x-last-death-")


def own_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """`headers` without those the broker wrote: what a copy of the message carries."""
    return {key: value for key, value in headers.items() if not key.startswith(_BROKER_HEADERS)}


def copy_of(
    message: AbstractIncomingMessage,
    headers: Mapping[str, Any] | None = None,
    *,
    expiration: float | None = None,
) -> aio_pika.Message:
    """A persistent copy of `message` to publish again (a delayed retry, a parked or replayed
    message): its body, ids and our headers, with `headers` added; never the broker's."""
    return aio_pika.Message(
        message.body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        timestamp=message.timestamp,
        headers={**own_headers(message.headers), **(headers or {})},
        expiration=expiration,
    )


def retry_attempt(message: AbstractIncomingMessage) -> int:
    """How many delayed retries `message` has had so far."""
    value = message.headers.get(ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) else 0


PUBLISHED = Counter(
    "civicline_published_total",
    "Messages published with a broker confirm",
    ["routing_key", "outcome"],
)
CONSUMED = Counter("civicline_consumed_total", "Messages consumed", ["queue", "outcome"])
HANDLE_SECONDS = Histogram("civicline_handle_seconds", "Time to handle one message", ["queue"])


@functools.cache
def _consumed(queue: str, outcome: str) -> Counter:
    return CONSUMED.labels(queue, outcome)


@functools.cache
def _published(routing_key: str, outcome: str) -> Counter:
    # labels() takes a lock and builds a key on every call; the set of routing keys is small
    # and fixed (our own routing keys), so each child is looked up once.
    return PUBLISHED.labels(routing_key, outcome)


class PublishFailed(DependencyUnavailable):
    """The broker did not confirm the message: unreachable, nacked, unroutable or too slow."""


class PoisonMessage(Exception):
    """A message that can never be processed; it is dead-lettered, never requeued."""


# Seconds between AMQP heartbeats unless the URL sets `heartbeat`: a connection whose packets
# vanish (a black-holed network, no FIN) is noticed within a few intervals, not minutes.
DEFAULT_HEARTBEAT = 5
# Seconds one connection attempt may take (TCP, TLS and the AMQP handshake) before it is
# given up and tried again.
CONNECT_TIMEOUT = 10


def with_heartbeat(url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(DEFAULT_HEARTBEAT))
    return urlunsplit(parts._replace(query=urlencode(query)))


class Broker:
    """The process's one robust AMQP connection, established in the background with retries."""

    def __init__(self, url: str, *, connection_name: str, reconnect_interval: float = 1.0) -> None:
        self._url = url
        self._name = connection_name
        self._reconnect_interval = reconnect_interval
        self._connection: AbstractRobustConnection | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name=f"amqp-connect-{self._name}")

    async def _connect(self) -> None:
        async def attempt() -> AbstractRobustConnection:
            # Built here rather than by aio_pika.connect_robust, which hands back nothing when
            # the first connect fails or is cancelled: the connection's own reconnect task
            # then lives on, retrying forever and swallowing every cancellation until close()
            # is called, so a process that started against a silent broker never exited.
            connection = aio_pika.RobustConnection(
                URL(with_heartbeat(self._url)),
                client_properties={"connection_name": self._name},
                reconnect_interval=self._reconnect_interval,
            )
            try:
                await connection.connect(timeout=CONNECT_TIMEOUT)
            except BaseException:
                await connection.close()
                raise
            return connection

        self._connection = await retry_forever(attempt, what=f"rabbitmq {redact_url(self._url)}")
        log.info("amqp_connected", broker=redact_url(self._url))
        self._connected.set()

    async def connection(self) -> AbstractRobustConnection:
        """The connection, waiting for the first successful connect."""
        self.start()
        await self._connected.wait()
        assert self._connection is not None
        return self._connection

    @property
    def is_ready(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            # close() stops the reconnect task before it says goodbye to the broker, so even
            # when a black-holed broker never answers, nothing keeps retrying after this.
            await shutdown_step("close the AMQP connection", self._connection.close())


class Publisher:
    """Publishes with publisher confirms; every failure surfaces as PublishFailed."""

    def __init__(self, broker: Broker, *, timeout: float) -> None:
        self._broker = broker
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _ensure_exchange(self) -> AbstractExchange:
        if self._exchange is not None:
            return self._exchange
        async with self._lock:
            if self._exchange is None:
                connection = await self._broker.connection()
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare(channel)
                self._channel = channel
                self._exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        return self._exchange

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        correlation_id: str,
        content_type: str,
        headers: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        if not self._broker.is_ready:
            _published(routing_key, "unavailable").inc()
            raise PublishFailed("broker connection is not open")
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            content_type=content_type,
            timestamp=timestamp,
            headers={
                KIND_HEADER: routing_key,
                **(headers or {}),
                CORRELATION_HEADER: correlation_id,
            },
        )
        try:
            exchange = self._exchange
            if exchange is None:
                exchange = await asyncio.wait_for(self._ensure_exchange(), self._timeout)
            await exchange.publish(message, routing_key, mandatory=True, timeout=self._timeout)
        except asyncio.CancelledError as exc:
            if not cancelled_from_below():
                raise  # our own task is being cancelled: let it
            # aiormq runs each channel call as a task of its own and cancels it when the
            # channel closes (a broker restart, a dead connection): the message is not
            # confirmed, which is a failed publish, not a cancellation of the caller.
            _published(routing_key, "failed").inc()
            raise PublishFailed("channel closed before the broker confirmed") from exc
        except Exception as exc:
            _published(routing_key, "failed").inc()
            raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc
        _published(routing_key, "confirmed").inc()

    async def retry_later(
        self, message: AbstractIncomingMessage, spec: QueueSpec, attempt: int
    ) -> None:
        """Put a copy of `message` in `spec`'s delay queue for its `attempt`-th retry (with
        jitter: it expires after 80–100 % of that queue's delay), confirmed by the broker."""
        queue = spec.retry_queue(attempt)
        delay = int(queue.rsplit(".", 1)[1].removesuffix("s"))
        await self._delay(
            message,
            queue,
            {ATTEMPT_HEADER: attempt},
            expiration=delay * (0.8 + random.random() / 5),
        )

    async def park(self, message: AbstractIncomingMessage, spec: QueueSpec) -> None:
        """Put a copy of `message` in `spec`'s longest delay queue, to be tried again when it
        expires, without spending a retry: for work held so long by an outage that the broker
        would take it back (Consumer.park_after).

        The copy is a new delivery, with a delivery id of its own: an id carried in the
        message would reach two holders at once if the copy were redelivered while a handler
        still worked on it, and each would take the other's claim for its own. So a claim the
        handler wrote just before the outage (its answer lost) is someone else's to the copy:
        past its lease, that reply is reported in doubt, never sent twice."""
        queue = spec.retry_queue(len(spec.retry_delays))
        # No jitter: a citizen's messages parked one after another come back in that order.
        await self._delay(message, queue, {}, expiration=None)

    async def _delay(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        headers: Mapping[str, Any],
        *,
        expiration: float | None,
    ) -> None:
        copy = copy_of(message, headers, expiration=expiration)
        try:
            await asyncio.wait_for(self._ensure_exchange(), self._timeout)
            assert self._channel is not None
            await self._channel.default_exchange.publish(
                copy, queue, mandatory=True, timeout=self._timeout
            )
        except Exception as exc:
            PUBLISHED.labels(queue, "failed").inc()
            raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc
        PUBLISHED.labels(queue, "confirmed").inc()

    async def publish_envelope(self, envelope: Envelope) -> None:
        await self.publish(
            event_routing_key(envelope.kind, envelope.payload),
            envelope.encode(),
            headers={KIND_HEADER: envelope.kind},
            message_id=str(envelope.event_id),
            correlation_id=envelope.correlation_id,
            content_type=CONTENT_TYPE,
            timestamp=envelope.occurred_at,
        )


MessageHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]

# How long a finished delivery may wait to be acked together with others (civicline.common.acks).
ACK_LINGER = 0.005


@dataclass(slots=True)
class _ChannelAcks:
    """One channel's unsettled deliveries: which have finished, and the messages to ack."""

    channel: object
    ledger: AckLedger = field(default_factory=AckLedger)
    messages: dict[int, AbstractIncomingMessage] = field(default_factory=dict)


def _channel_of(message: AbstractIncomingMessage) -> object:
    try:
        return message.channel
    except aio_pika.exceptions.ChannelInvalidStateError:  # closed since it was delivered
        return None


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    channel = _channel_of(message)
    return channel is None or bool(getattr(channel, "is_closed", True))


class Consumer:
    """Consumes one queue with manual acks and a bounded prefetch.

    Every log line written while handling carries the message's correlation id (the
    WhatsApp message id) from the `x-correlation-id` header. The handler returning means the
    message's effect is durable: it is acked. `PoisonMessage` rejects it without requeue, so
    the broker dead-letters it. A dependency outage (Postgres or the broker unreachable) is
    retried in place with backoff, holding the message: work waits instead of cycling through
    requeues and burning its delivery limit, and with every prefetch slot held the consumer
    takes nothing more until the dependency is back. Any other exception is taken as a bug or
    a bad message: after a pause it is requeued, and the delivery limit dead-letters it if it
    keeps failing.

    Acks wait up to `ack_linger` seconds to go together, as one `multiple` ack for each run
    of finished deliveries (civicline.common.acks); with 0 they go at the loop's next turn.
    What is published downstream is not delayed by it, only the prefetch slot.

    A message held through an outage for `park_after` seconds (Settings.park_after) is handed
    to `park` (a copy into the queue's delay queue) and acked: RabbitMQ takes back a delivery
    left unacked for its `consumer_timeout` (30 min by default) by closing the channel, and
    before 4.3 every such return counts toward the delivery limit, so work held through a long
    outage would be dead-lettered instead of done. Waiting on `UpstreamPaused` keeps the
    consumer ready.
    """

    def __init__(
        self,
        broker: Broker,
        spec: QueueSpec,
        handler: MessageHandler,
        *,
        prefetch: int,
        retry_pause: float = 1.0,
        max_outage_backoff: float = 5.0,
        ack_linger: float = ACK_LINGER,
        park: Callable[[AbstractIncomingMessage], Awaitable[None]] | None = None,
        park_after: float = math.inf,
    ) -> None:
        self._broker = broker
        self._spec = spec
        self._handler = handler
        self._prefetch = prefetch
        self._retry_pause = retry_pause
        self._max_outage_backoff = max_outage_backoff
        self._queue: AbstractQueue | None = None
        self._channel: AbstractChannel | None = None
        self._tag: str | None = None
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._waiting_on_outage = 0
        self._handle_seconds = HANDLE_SECONDS.labels(spec.name)
        self._ack_linger = ack_linger
        self._acks: _ChannelAcks | None = None
        # Held while acks are taken and sent, and while a nack or reject is sent: frames go out
        # in the order the ledger decided them, so no ack names a tag already settled.
        self._ack_lock = asyncio.Lock()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acking: set[asyncio.Task[None]] = set()
        self._acks_closed = False
        self._park = park
        self._park_after = park_after

    @property
    def is_consuming(self) -> bool:
        return self._tag is not None and self._broker.is_ready and self._waiting_on_outage == 0

    async def start(self) -> None:
        """Open a channel, declare the topology and consume. On failure (the broker went
        away meanwhile, or refused a declaration) the channel is closed again, so the caller
        may simply try again."""
        self._acks_closed = False
        connection = await self._broker.connection()
        channel = await connection.channel()
        try:
            await channel.set_qos(prefetch_count=self._prefetch)
            declared = await declare(channel)
            queue = declared.queues[self._spec.name]
            self._tag = await queue.consume(self._deliver)
        except BaseException:
            await shutdown_step("close a channel that failed to start consuming", channel.close())
            raise
        self._channel, self._queue = channel, queue
        log.info("consuming", queue=self._spec.name, prefetch=self._prefetch)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        acks = self._acks_of(message)
        # aiormq runs this callback in a task it cancels when the channel closes (a broker
        # restart, a network cut). Cancelled between "reply claimed" and "reply sent", a
        # handler would leave its work half done; so the work runs in a task of our own,
        # shielded, and finishes (its ack then fails harmlessly and the broker redelivers).
        work = asyncio.create_task(self._work(message, acks))
        self._in_flight.add(work)
        self._idle.clear()
        work.add_done_callback(self._finished)
        await asyncio.shield(work)

    def _finished(self, work: asyncio.Task[None]) -> None:
        self._in_flight.discard(work)
        if not self._in_flight:
            self._idle.set()

    def _acks_of(self, message: AbstractIncomingMessage) -> _ChannelAcks:
        """The acks of the delivery's channel, where it is entered as unfinished."""
        channel = _channel_of(message)
        if self._acks is None or self._acks.channel is not channel:
            # A robust channel that reopened numbers its deliveries afresh; those of the closed
            # one can no longer be acked, and the broker redelivers them.
            self._acks = _ChannelAcks(channel)
        if message.delivery_tag is not None:
            self._acks.ledger.delivered(message.delivery_tag)
            self._acks.messages[message.delivery_tag] = message
        return self._acks

    async def _work(self, message: AbstractIncomingMessage, acks: _ChannelAcks) -> None:
        correlation_id = message.headers.get(CORRELATION_HEADER) or message.correlation_id
        delivery_id.set(uuid.uuid4().hex)
        try:
            with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
                await self._handle(message, acks)
        except Exception:
            # A fault in the runner itself must not strand the message unsettled (it would
            # sit unacknowledged until the connection dies): give it back to the queue.
            log.exception("consumer_runner_failed", queue=self._spec.name)
            await self._settle_now(acks, message, requeue=True)

    async def _handle(self, message: AbstractIncomingMessage, acks: _ChannelAcks) -> None:
        queue = self._spec.name
        outages = 0
        held_since = 0.0
        while True:
            try:
                with self._handle_seconds.time():
                    await self._handler(message)
            except PoisonMessage as exc:
                _consumed(queue, "dead_lettered").inc()
                log.error("message_dead_lettered", queue=queue, reason=str(exc))
                await self._settle_now(acks, message, requeue=False)
                return
            except Exception as exc:
                if is_outage(exc) and not self._stopping and not _channel_closed(message):
                    outages += 1
                    now = asyncio.get_running_loop().time()
                    held_since = held_since or now
                    if now - held_since >= self._park_after and await self._parked(message, exc):
                        _consumed(queue, "parked").inc()
                        self._done(acks, message)
                        return
                    await self._wait_out(exc, outages)
                    continue
                if self._stopping or _channel_closed(message):
                    # Unsettled: the broker gives it to another consumer once our channel closes.
                    _consumed(queue, "abandoned").inc()
                    log.warning(
                        "message_abandoned",
                        queue=queue,
                        reason="stopping" if self._stopping else "channel closed",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    return
                _consumed(queue, "requeued").inc()
                log.exception("message_failed_will_retry", queue=queue)
                await asyncio.sleep(self._retry_pause)
                await self._settle_now(acks, message, requeue=True)
                return
            else:
                _consumed(queue, "acked").inc()
                self._done(acks, message)
                return

    async def _parked(self, message: AbstractIncomingMessage, exc: BaseException) -> bool:
        """Whether the message, held through a long outage, is now safe in the delay queue."""
        if self._park is None:
            return False
        try:
            await self._park(message)
        except Exception as failure:
            log.warning(
                "park_failed", queue=self._spec.name, error=f"{type(failure).__name__}: {failure}"
            )
            return False
        log.warning(
            "message_parked",
            queue=self._spec.name,
            after_seconds=self._park_after,
            error=f"{type(exc).__name__}: {exc}",
        )
        return True

    async def _wait_out(self, exc: BaseException, outages: int) -> None:
        if outages == 1 or outages % 10 == 0:
            log.warning(
                "dependency_outage_holding_message",
                queue=self._spec.name,
                attempt=outages,
                error=f"{type(exc).__name__}: {exc}",
            )
        delay = min(self._max_outage_backoff, 0.1 * 2 ** min(outages, 10))
        # Waiting on people outside (a paused sender) is no fault of this process: it stays
        # ready, and keeps serving what does not need the sender (the campaign API).
        counted = not isinstance(exc, UpstreamPaused)
        self._waiting_on_outage += counted
        try:
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
        finally:
            self._waiting_on_outage -= counted

    async def _settle_now(
        self, acks: _ChannelAcks, message: AbstractIncomingMessage, *, requeue: bool
    ) -> None:
        """Give the message back to the queue (`requeue`) or dead-letter it, at once. It stays
        unfinished in the ledger until the frame is out, so no multiple ack taken meanwhile can
        settle it first.

        Both are `basic.reject`: since RabbitMQ 4.3 only a reject counts toward a quorum
        queue's delivery limit (a `basic.nack` says "not processed", not "failed"), so a
        message that fails every time would otherwise be requeued forever, never
        dead-lettered. On 3.10 both count; tests/integration/test_topology.py pins it."""
        async with self._ack_lock:
            await self._settle(message.reject(requeue=requeue))
            if message.delivery_tag is not None:
                acks.ledger.dropped(message.delivery_tag)
                acks.messages.pop(message.delivery_tag, None)

    def _done(self, acks: _ChannelAcks, message: AbstractIncomingMessage) -> None:
        """The message's effect is durable: ack it with those finished around it."""
        if acks is not self._acks or message.delivery_tag is None:
            return  # its channel closed: the broker redelivers it
        acks.ledger.finished(message.delivery_tag)
        self._schedule_acks()

    def _schedule_acks(self) -> None:
        if self._ack_timer is None and not self._acks_closed:
            self._ack_timer = asyncio.get_running_loop().call_later(self._ack_linger, self._ack_due)

    def _ack_due(self) -> None:
        self._ack_timer = None
        task = asyncio.create_task(self._send_acks())
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _send_acks(self, *, everything: bool = False) -> None:
        """One round: the acks the ledger allows now, sent in order under the ack lock."""
        async with self._ack_lock:
            acks = self._acks
            if acks is None:
                return
            taken: Acks = acks.ledger.take(everything=everything)
            sends = []
            if taken.up_to is not None:
                sends.append(acks.messages[taken.up_to].ack(multiple=True))
                for tag in taken.covered:
                    del acks.messages[tag]
            sends.extend(acks.messages.pop(tag).ack() for tag in taken.singles)
            for send in sends:
                await self._settle(send)
            if acks.ledger.waiting:  # some wait behind an unfinished delivery: another round
                self._schedule_acks()

    @staticmethod
    async def _settle(settlement: Awaitable[None]) -> None:
        # The channel may have died while we worked: the broker then redelivers the message
        # to another consumer, and our consumers are idempotent, so nothing is lost.
        try:
            await settlement
        except asyncio.CancelledError:
            if not cancelled_from_below():
                raise
            log.warning("settle_failed", error="the channel closed under the ack")
        except Exception as exc:
            log.warning("settle_failed", error=f"{type(exc).__name__}: {exc}")

    async def _last_acks(self) -> None:
        await asyncio.gather(*self._acking, return_exceptions=True)
        await self._send_acks(everything=True)

    async def stop(self, timeout: float) -> None:
        """Stop taking messages, let in-flight ones finish (up to `timeout`), then cancel what
        is left unsettled (the broker redelivers it) and close the channel."""
        self._stopping = True
        if self._queue is not None and self._tag is not None:
            await shutdown_step(
                f"cancel the consumer of {self._spec.name}", self._queue.cancel(self._tag)
            )
            self._tag = None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("drain_timeout", queue=self._spec.name, in_flight=len(self._in_flight))
            for task in list(self._in_flight):
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._acks_closed = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        await shutdown_step(f"ack what {self._spec.name} finished", self._last_acks())
        if self._channel is not None:
            await shutdown_step(f"close the channel of {self._spec.name}", self._channel.close())
