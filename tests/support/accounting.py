"""End-to-end counting after a fault, the way Jepsen's queue checkers count: every webhook
answered 200 must be audited, nothing may be audited that was never sent, no event is audited
twice, no citizen message gets two replies, and the queues end empty."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import aio_pika
import asyncpg

from civicline.common.topology import (
    AUDIT_EVENTS,
    CONSUMED_QUEUES,
    RESPONDER_BROADCASTS,
    RESPONDER_MESSAGES,
    RESPONDER_STATUSES,
    ROUTER_INBOUND,
)
from civicline.simulator.server import Simulator
from support.traffic import TrafficLog


@dataclass(frozen=True, slots=True)
class Outcome:
    scenario: str
    sent: int
    accepted: int
    audited: int
    replied: int
    in_doubt: int
    failed: int
    duplicate_replies: int
    duplicate_audit_rows: int
    unexpected: int
    lost: int
    unanswered: int

    def line(self) -> str:
        return (
            f"{self.scenario}: sent {self.sent}, accepted {self.accepted}, "
            f"audited {self.audited}, replied {self.replied}, "
            f"duplicate replies {self.duplicate_replies}, lost {self.lost}, "
            f"in doubt {self.in_doubt}, failed {self.failed}, unanswered {self.unanswered}, "
            f"duplicate audit rows {self.duplicate_audit_rows}, unexpected {self.unexpected}"
        )


async def audited_messages(database_url: str) -> Counter[str]:
    """wamid → number of classified-message rows in the audit log."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT correlation_id FROM audit_log WHERE kind LIKE 'message.%'"
        )
    finally:
        await connection.close()
    return Counter(row["correlation_id"] for row in rows)


async def outcome_rows(database_url: str) -> dict[str, Counter[str]]:
    """kind → Counter(inbound wamid) for the responder's outcome events."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT kind, correlation_id FROM audit_log WHERE kind LIKE 'outbound.%'"
        )
    finally:
        await connection.close()
    found: dict[str, Counter[str]] = {}
    for row in rows:
        found.setdefault(row["kind"], Counter())[row["correlation_id"]] += 1
    return found


def replies_by_wamid(simulator: Simulator) -> Counter[str]:
    counts: Counter[str] = Counter()
    for send in simulator.sent():
        context = send.body.get("context")
        if isinstance(context, dict) and isinstance(context.get("message_id"), str):
            counts[context["message_id"]] += 1
    return counts


async def wait_until_settled(
    database_url: str, simulator: Simulator, wamids: set[str], *, timeout: float = 120.0
) -> None:
    """Wait until every wamid is audited and has an outcome (reply, failure or doubt), or the
    timeout passes; the counts that follow tell what is missing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            audited = await audited_messages(database_url)
            outcomes = await outcome_rows(database_url)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.5)
            continue
        settled = set().union(*(set(c) for c in outcomes.values())) if outcomes else set()
        if wamids <= set(audited) and wamids <= settled:
            return
        await asyncio.sleep(0.25)


async def count(scenario: str, log: TrafficLog, database_url: str, simulator: Simulator) -> Outcome:
    audited = await audited_messages(database_url)
    outcomes = await outcome_rows(database_url)
    replies = replies_by_wamid(simulator)
    sent, accepted = log.sent_wamids, log.accepted_wamids
    in_doubt = set(outcomes.get("outbound.in_doubt", {}))
    failed = set(outcomes.get("outbound.failed", {}))
    answered = {w for w in accepted if replies[w] >= 1} | in_doubt | failed
    return Outcome(
        scenario=scenario,
        sent=len(sent),
        accepted=len(accepted),
        audited=len(set(audited) & sent),
        replied=sum(1 for w in accepted if replies[w] >= 1),
        in_doubt=len(in_doubt & accepted),
        failed=len(failed & accepted),
        duplicate_replies=sum(1 for w in replies if replies[w] > 1),
        duplicate_audit_rows=sum(1 for w in audited if audited[w] > 1)
        + sum(1 for c in outcomes.values() for w in c if c[w] > 1),
        unexpected=len(set(audited) - sent),
        lost=len(accepted - set(audited)),
        unanswered=len(accepted - answered),
    )


async def queue_depths(amqp_url: str, names: list[str] | None = None) -> dict[str, int]:
    """Messages ready in these queues, or in every queue of the topology (call after the
    consumers stopped, so nothing is held unacknowledged)."""
    if names is None:
        queues = CONSUMED_QUEUES
        names = [spec.name for spec in queues] + [spec.dead_letter_queue for spec in queues]
        names += [f"{spec.name}.retry.{delay}s" for spec in queues for delay in spec.retry_delays]
    connection = await aio_pika.connect(amqp_url)
    depths = {}
    async with connection:
        channel = await connection.channel()
        for name in names:
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = queue.declaration_result.message_count or 0
    return depths


async def audit_is_gapless(database_url: str) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS n, coalesce(max(seq), -1) AS top, "
            "(SELECT next_seq FROM audit_log_state) AS next FROM audit_log"
        )
    finally:
        await connection.close()
    assert row is not None
    return bool(row["n"] == row["top"] + 1 == row["next"])


# The queues each consumer takes its work from.
INPUT_QUEUES = {
    "router": (ROUTER_INBOUND.name,),
    "responder": (RESPONDER_MESSAGES.name, RESPONDER_BROADCASTS.name, RESPONDER_STATUSES.name),
    "audit": (AUDIT_EVENTS.name,),
}


async def queues_empty(amqp_url: str, names: list[str]) -> bool:
    """No message waits to be delivered in any of these queues."""
    return not names or not any((await queue_depths(amqp_url, names)).values())
