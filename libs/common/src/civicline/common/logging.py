"""structlog JSON logging: one JSON object per line on stdout, correlation id from contextvars.

Handlers bind `correlation_id` (the WhatsApp message id, or the raw webhook's event id) with
`structlog.contextvars.bound_contextvars`, so every line logged while handling a message
carries it; the id travels between services in the AMQP `correlation_id` property and the
`x-correlation-id` header. Standard-library loggers (aio-pika, aiohttp) go through the same
renderer so a log shipper sees one format.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure_logging(service: str, level: str = "info") -> None:
    """Configure structlog and the stdlib root logger for one service process."""
    numeric_level = _LEVELS.get(level, logging.ERROR)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library chatter (aio-pika reconnect notices) is useful at warning level and above.
    root.setLevel(max(numeric_level, logging.WARNING))
