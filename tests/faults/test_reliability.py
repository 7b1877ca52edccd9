"""Nothing accepted is ever lost: each fault is injected while traffic flows, then the
pipeline is counted end to end (see support/accounting.py). Each scenario prints its line:
`scenario: sent N, accepted N, audited N, replied N, duplicate replies 0, lost 0, ...`.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from civicline.simulator.webhooks import text_message_webhook
from support import faults
from support.harness import Harness, ProxiedHarness, assert_nothing_lost
from support.pipeline import APP_SECRET
from support.traffic import TrafficLog, Webhook, citizen_messages, deliver
from support.waiting import eventually

pytestmark = pytest.mark.faults


@pytest.mark.alone
async def test_rabbitmq_restarted_during_traffic(harness: Harness) -> None:
    log = TrafficLog()
    traffic = harness.traffic(citizen_messages(400), log)
    await eventually(lambda: len(log.accepted) >= 80, what="traffic to flow")
    await asyncio.to_thread(faults.rabbitmq_stop_app)
    try:
        # While it cannot get confirms, ingress refuses (Meta will retry), never says 200.
        await eventually(lambda: log.statuses[503] >= 20, what="ingress to answer 503")
    finally:
        await asyncio.to_thread(faults.rabbitmq_start_app)
    await traffic
    for service in harness.pipeline.processes:
        await harness.pipeline.wait_ready(service)

    outcome = await harness.settle_and_count("rabbitmq restart", log)
    assert_nothing_lost(outcome)


@pytest.mark.parametrize("victim", ["router", "responder", "audit"])
async def test_a_consumer_killed_mid_batch_loses_and_duplicates_nothing(
    harness: Harness, victim: str
) -> None:
    log = TrafficLog()
    traffic = harness.traffic(citizen_messages(400), log)
    await eventually(lambda: len(log.accepted) >= 100, what="traffic to flow")
    harness.pipeline.kill(victim)
    await eventually(lambda: len(log.accepted) >= 200, what="ingress to keep accepting")
    await harness.pipeline.restart(victim)
    await traffic

    outcome = await harness.settle_and_count(f"SIGKILL {victim}", log)
    # A responder killed between "about to send" and "Meta answered" leaves a reply whose
    # fate is unknown: it is reported as in doubt, never sent twice.
    assert_nothing_lost(outcome)


@pytest.mark.alone
async def test_postgres_down_for_a_while_makes_work_wait_not_vanish(harness: Harness) -> None:
    log = TrafficLog()
    traffic = harness.traffic(citizen_messages(400), log)
    await eventually(lambda: len(log.accepted) >= 80, what="traffic to flow")
    await asyncio.to_thread(faults.postgres_stop_immediate)
    try:
        # Ingress needs no database: it keeps accepting while the consumers wait.
        accepted_at_stop = len(log.accepted)
        await eventually(
            lambda: len(log.accepted) >= accepted_at_stop + 100, what="ingress to keep accepting"
        )
        for service in ("router", "responder", "audit"):
            assert not await harness.pipeline.is_ready(service), f"{service} claims readiness"
    finally:
        await asyncio.to_thread(faults.postgres_start)
    await traffic

    outcome = await harness.settle_and_count("postgres down", log)
    assert_nothing_lost(outcome)


async def test_graph_api_failures_are_retried_and_permanent_errors_recorded(
    harness: Harness,
) -> None:
    hooks = citizen_messages(150)
    unreachable = citizen_messages(5, prefix="4470")
    # Targeted faults first: a send to an unreachable citizen matches its own fault.
    harness.simulator.inject_faults(
        [{"code": 131026, "count": 1, "to": hook_citizen(h)} for h in unreachable]
    )
    harness.simulator.inject_faults(
        [
            {"http_status": 500, "code": 131000, "count": 15},
            {"http_status": 429, "code": 130429, "count": 5},
            {"http_status": 503, "count": 10},
        ]
    )
    log = await deliver(harness.pipeline.webhook_url, APP_SECRET, hooks + unreachable)

    outcome = await harness.settle_and_count("graph api failing", log)
    assert_nothing_lost(outcome)
    assert outcome.failed == len(unreachable), outcome.line()
    assert outcome.replied == len(hooks), outcome.line()


async def test_meta_redelivers_every_webhook_up_to_five_times_out_of_order(
    harness: Harness,
) -> None:
    hooks = citizen_messages(200)
    rng = random.Random(7)
    redelivered = [hook for hook in hooks for _ in range(rng.randint(1, 5))]
    rng.shuffle(redelivered)
    log = await deliver(harness.pipeline.webhook_url, APP_SECRET, redelivered)

    outcome = await harness.settle_and_count("meta redelivery x1-5", log)
    assert_nothing_lost(outcome)
    assert outcome.sent == len(hooks)


@pytest.mark.parametrize("service", ["ingress", "router", "responder", "audit"])
async def test_sigterm_under_load_drains_and_exits_zero(harness: Harness, service: str) -> None:
    log = TrafficLog()
    traffic = harness.traffic(citizen_messages(300), log)
    await eventually(lambda: len(log.accepted) >= 80, what="traffic to flow")
    assert await harness.pipeline.stop(service, timeout=30) == 0
    await harness.pipeline.restart(service)
    await traffic

    outcome = await harness.settle_and_count(f"SIGTERM {service}", log)
    assert_nothing_lost(outcome)


def hook_citizen(hook: Webhook) -> str:
    marker = b'"from":"'
    start = hook.body.index(marker) + len(marker)
    return hook.body[start : hook.body.index(b'"', start)].decode()


async def test_poison_webhooks_are_kept_and_never_loop(harness: Harness) -> None:
    not_json = b'{"object":"whatsapp_business_account","entry":[{'
    wrong_shape = b'{"object":"page","entry":"nope"}'
    unknown_type = (
        b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
        b'"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550100200",'
        b'"phone_number_id":"106512349876543"},"contacts":[{"wa_id":"821055550000"}],'
        b'"messages":[{"from":"821055550000","id":"wamid.UNKNOWNTYPE1","timestamp":"1767225600",'
        b'"type":"hologram","hologram":{"x":1}}]}}]}]}'
    )
    # A huge batch: one body close to Meta's 3 MB cap, carrying many messages.
    huge = build_batch(
        [
            text_message_webhook(wa_id=f"8210555{i:05d}", text="투표소 " + "나" * 800)
            for i in range(900)
        ]
    )
    assert 2_000_000 < len(huge.body) < 3_000_000
    ordinary = citizen_messages(50)
    poison = [Webhook(not_json, ()), Webhook(wrong_shape, ())]
    hooks = [*poison, Webhook(unknown_type, ("wamid.UNKNOWNTYPE1",)), huge, *ordinary]
    log = await deliver(harness.pipeline.webhook_url, APP_SECRET, hooks)

    outcome = await harness.settle_and_count("poison", log, allow_dead_letters=len(poison))
    assert_nothing_lost(outcome)
    rejected = await harness.audit_kinds("inbound.rejected")
    assert rejected == len(poison)
    depths = await harness.dead_letters()
    # The two poison bodies wait for inspection in the router's dead-letter queue; every other
    # dead-letter queue (whatever queues the topology has) stays empty.
    assert depths == dict.fromkeys(depths, 0) | {"router.inbound.dlq": 2}


def build_batch(messages: list[tuple[bytes, str]]) -> Webhook:
    """One webhook body carrying every message of `messages` (as Meta batches them)."""
    bodies = [orjson.loads(body) for body, _ in messages]
    value = bodies[0]["entry"][0]["changes"][0]["value"]
    for other in bodies[1:]:
        other_value = other["entry"][0]["changes"][0]["value"]
        value["contacts"] += other_value["contacts"]
        value["messages"] += other_value["messages"]
    return Webhook(orjson.dumps(bodies[0]), tuple(wamid for _, wamid in messages))


@pytest.mark.parametrize(
    "fault",
    [
        "rabbitmq cut",
        "rabbitmq black hole",
        "rabbitmq chopped mid-frame",
        "postgres cut",
        "postgres black hole",
    ],
)
async def test_network_faults_between_services_and_their_dependencies(
    proxied_harness: ProxiedHarness, fault: str
) -> None:
    harness = proxied_harness.harness
    proxy = proxied_harness.amqp if fault.startswith("rabbitmq") else proxied_harness.postgres
    log = TrafficLog()
    traffic = harness.traffic(citizen_messages(300), log)
    await eventually(lambda: len(log.accepted) >= 60, what="traffic to flow")
    consumers = ("router", "responder", "audit")
    if fault.endswith("cut"):
        proxy.refuse()
        proxy.cut()
        # The outage lasts a while (reconnects are refused meanwhile) and is noticed.
        await eventually(
            lambda: log.statuses[503] > 0 if fault.startswith("rabbitmq") else True,
            what="ingress to refuse while the broker is unreachable",
        )
        await asyncio.sleep(3)
    elif fault.endswith("black hole"):
        proxy.black_hole()
        # Long enough for heartbeats (AMQP) and command timeouts (Postgres) to notice.
        await asyncio.sleep(20)
    else:
        proxy.chop_after(7)
        await eventually(lambda: proxy.chops >= 1, what="a connection to be chopped")
    if fault.startswith("postgres") and fault.endswith(("cut", "black hole")):
        readiness = [await harness.pipeline.is_ready(s) for s in consumers]
        assert not any(readiness), f"ready while Postgres is unreachable: {readiness}"
    if fault == "rabbitmq black hole":
        assert log.statuses[503] > 0, "ingress said 200 while the broker was black-holed"
    proxy.restore()
    await traffic

    outcome = await harness.settle_and_count(fault, log)
    assert_nothing_lost(outcome)
