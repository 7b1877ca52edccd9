"""`civicline-dlq`: what waits in the dead-letter queues, and putting it back to work.

A message reaches `<queue>.dlq` when it is poison (a body that cannot be parsed, kept for
inspection) or when it failed its delivery limit: a bug since fixed, or an outage so long that
the broker took it back again and again. Once the cause is fixed, `replay` moves it back into
its queue, each message confirmed by the broker there before it leaves the dead-letter queue,
so a replay cut short (Ctrl-C, a lost connection) loses nothing and at worst repeats a message,
which every consumer takes once (their event ids and claims).

    civicline-dlq list                               # every dead-letter queue and its depth
    civicline-dlq replay router.inbound [--limit N]  # router.inbound.dlq -> router.inbound
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from civicline.common.amqp import copy_of
from civicline.common.settings import Settings, SettingsError, redact_url
from civicline.common.topology import QUEUES, declare

USAGE_ERROR = 2


async def depths(channel: AbstractChannel) -> dict[str, int]:
    """Messages waiting in each dead-letter queue."""
    declared = await declare(channel)
    queues = declared.queues
    return {
        spec.dead_letter_queue: queues[spec.dead_letter_queue].declaration_result.message_count or 0
        for spec in QUEUES
    }


async def replay(channel: AbstractChannel, queue: str, *, limit: int | None = None) -> int:
    """Move up to `limit` messages (all, by default) from `queue`'s dead-letter queue back into
    `queue`; returns how many. `channel` must have publisher confirms on.

    Never more than were waiting when it began: a message that is still poison comes back to
    the dead-letter queue within moments, and would otherwise be replayed for ever."""
    declared = await declare(channel)
    dead_letters = declared.queues[f"{queue}.dlq"]
    waiting = dead_letters.declaration_result.message_count or 0
    limit = waiting if limit is None else min(limit, waiting)
    moved = 0
    while moved < limit:
        message = await dead_letters.get(no_ack=False, fail=False)
        if message is None:
            break
        try:
            await _put_back(channel, message, queue)
        except BaseException:
            await message.nack(requeue=True)  # stays where it was
            raise
        await message.ack()
        moved += 1
    return moved


async def _put_back(channel: AbstractChannel, message: AbstractIncomingMessage, queue: str) -> None:
    # The default exchange routes to the queue alone: a replay is not audited or routed twice.
    await channel.default_exchange.publish(copy_of(message), queue, mandatory=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="civicline-dlq", description="Inspect and replay civicline's dead-letter queues."
    )
    parser.add_argument("--amqp-url", help="default: CIVICLINE_AMQP_URL")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every dead-letter queue and how many messages wait there")
    again = actions.add_parser("replay", help="move a queue's dead letters back into it")
    again.add_argument("queue", choices=[spec.name for spec in QUEUES])
    again.add_argument("--limit", type=int, help="at most this many (default: all)")
    return parser


async def _run(args: argparse.Namespace, url: str) -> int:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        if args.action == "list":
            for name, count in (await depths(channel)).items():
                print(f"{name}\t{count}")
        else:
            moved = await replay(channel, args.queue, limit=args.limit)
            print(f"replayed {moved} from {args.queue}.dlq into {args.queue}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "limit", None) is not None and args.limit < 1:
        print("civicline-dlq: --limit must be at least 1", file=sys.stderr)
        return USAGE_ERROR
    try:
        url = args.amqp_url or Settings.from_env().amqp_url
    except SettingsError as exc:
        print(f"civicline-dlq: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        return asyncio.run(_run(args, url))
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        print(f"civicline-dlq: {redact_url(url)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
