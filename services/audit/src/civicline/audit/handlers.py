"""audit's message handler: every routing key, raw webhooks included, appended once."""

from __future__ import annotations

import structlog
from aio_pika.abc import AbstractIncomingMessage

from civicline.audit.adapters import BatchWriter, UnstorableRecord
from civicline.audit.core import UnauditableDelivery, record_from_delivery
from civicline.common.amqp import MessageHandler, PoisonMessage

log = structlog.get_logger(__name__)


def audit_handler(writer: BatchWriter) -> MessageHandler:
    async def handle(message: AbstractIncomingMessage) -> None:
        try:
            record = record_from_delivery(
                routing_key=message.routing_key or "",
                body=message.body,
                message_id=message.message_id,
                headers=message.headers,
                content_type=message.content_type,
            )
        except UnauditableDelivery as exc:
            raise PoisonMessage(str(exc)) from None
        try:
            await writer.append(record)
        except UnstorableRecord as exc:
            raise PoisonMessage(f"unstorable audit record: {exc}") from None
        log.debug("audited", kind=record.kind, event_id=str(record.event_id))

    return handle
