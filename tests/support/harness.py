"""The reliability suite's harness: an isolated environment, the simulator as Meta, the four
services as real processes, traffic, and the end-to-end count after each fault."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from civicline.audit.auditor import verify_database
from civicline.audit.checkpoint import Signer, Verifier
from civicline.simulator.server import Simulator
from support import scenarios
from support.accounting import (
    INPUT_QUEUES,
    Outcome,
    audit_is_gapless,
    count,
    queue_depths,
    queues_empty,
    wait_until_settled,
)
from support.isolation import Environment
from support.pipeline import APP_SECRET, SERVICES, Pipeline
from support.tcpproxy import TcpProxy
from support.traffic import TrafficLog, Webhook, deliver
from support.waiting import eventually


@dataclass
class Harness:
    environment: Environment
    simulator: Simulator
    pipeline: Pipeline
    log_dir: Path
    # The audit service signs tree heads with this key's private half during the run.
    verifier: Verifier

    def traffic(
        self, hooks: list[Webhook], log: TrafficLog, *, rate: float = 60.0
    ) -> asyncio.Task[TrafficLog]:
        """Start delivering `hooks` in the background at `rate` per second, as Meta would
        (retrying whatever is not answered 200)."""
        return asyncio.create_task(
            deliver(self.pipeline.webhook_url, APP_SECRET, hooks, log=log, rate=rate)
        )

    async def settle_and_count(
        self, scenario: str, log: TrafficLog, *, allow_dead_letters: int = 0
    ) -> Outcome:
        """Wait for the pipeline to finish the work, stop it gracefully, then count."""
        await wait_until_settled(self.environment.database_url, self.simulator, log.accepted_wamids)
        exit_codes = await self.stop_draining()
        outcome = await count(scenario, log, self.environment.database_url, self.simulator)
        scenarios.LINES.append(outcome.line())
        depths = await queue_depths(self.environment.amqp_url)
        dead = {name: n for name, n in depths.items() if name.endswith(".dlq")}
        live = {name: n for name, n in depths.items() if not name.endswith(".dlq")}
        assert live == dict.fromkeys(live, 0), (
            f"work left in queues: {live}; what the services said about it:\n"
            + self.pipeline.log_events(*WORK_LEFT_EVENTS)
        )
        assert sum(dead.values()) <= allow_dead_letters, f"dead letters: {dead}"
        assert await audit_is_gapless(self.environment.database_url)
        # The whole log verifies: every leaf recomputed, the tree rebuilt, every signed head
        # checked (an auditor's `civicline-audit verify`).
        report = await verify_database(self.environment.database_url, self.verifier)
        assert report.ok, "\n".join(report.lines())
        assert report.heads_checked >= 1, "the audit service signed no tree head"
        assert exit_codes == dict.fromkeys(exit_codes, 0), exit_codes
        return outcome

    async def stop_draining(self) -> dict[str, int]:
        """Stop the services one by one, upstream first, as a rollout drains a pipeline:
        after each, wait until the services still running have taken every message that the
        stopped one published on its way out (its last ledger flush, say), so a message
        sent a moment before the next SIGTERM is not counted as work left behind."""
        codes: dict[str, int] = {}
        order = [s for s in SERVICES if s in self.pipeline.processes]
        for service in order:
            codes[service] = await self.pipeline.stop(service)
            running = [s for s in order if s not in codes]
            inputs = [queue for s in running for queue in INPUT_QUEUES.get(s, ())]
            await eventually(
                functools.partial(queues_empty, self.environment.amqp_url, inputs),
                what=f"{', '.join(inputs) or 'nothing'} to be taken after {service} stopped",
                timeout=30.0,
            )
        return codes

    async def audit_kinds(self, kind: str) -> int:
        connection = await asyncpg.connect(self.environment.database_url)
        try:
            found: int = await connection.fetchval(
                "SELECT count(*) FROM audit_log WHERE kind = $1", kind
            )
        finally:
            await connection.close()
        return found

    async def dead_letters(self) -> dict[str, int]:
        depths = await queue_depths(self.environment.amqp_url)
        return {name: n for name, n in depths.items() if name.endswith(".dlq")}


# What a consumer logs when it leaves a message for the broker to give to another.
WORK_LEFT_EVENTS = (
    "message_abandoned",
    "drain_timeout",
    "settle_failed",
    "consumer_runner_failed",
    "message_failed_will_retry",
    "shutdown_step",
)


def assert_nothing_lost(outcome: Outcome, *, everything_accepted: bool = True) -> None:
    if everything_accepted:
        assert outcome.accepted == outcome.sent, outcome.line()
    assert outcome.lost == 0, outcome.line()
    assert outcome.audited == outcome.accepted, outcome.line()
    assert outcome.unexpected == 0, outcome.line()
    assert outcome.duplicate_replies == 0, outcome.line()
    assert outcome.duplicate_audit_rows == 0, outcome.line()
    assert outcome.unanswered == 0, outcome.line()


@dataclass
class ProxiedHarness:
    """A harness whose services reach RabbitMQ and Postgres through fault-injecting proxies."""

    harness: Harness
    amqp: TcpProxy
    postgres: TcpProxy


def signing_env() -> tuple[dict[str, str], Verifier]:
    """Settings that make the audit service sign a tree head every second, and the key an
    auditor would hold to check them."""
    signer = Signer.generate("faults.civicline.test")
    return {
        "AUDIT_SIGNING_KEY": signer.encode(),
        "AUDIT_CHECKPOINT_INTERVAL": "1",
    }, signer.verifier
