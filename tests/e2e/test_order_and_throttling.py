"""With two router and two responder processes running: Meta's throttling (130429) slows the
sender without losing a message, and one citizen's quick messages are answered in the order
they were sent."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from civicline.responder.throttle import PENALTY_SECONDS, RESERVATION
from civicline.simulator.server import Simulator
from civicline.simulator.webhooks import text_message_webhook
from support.accounting import replies_by_wamid
from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, Pipeline
from support.traffic import Webhook, citizen_messages, deliver

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEND_RATE = 100


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator() as sim:
        yield sim


@pytest.fixture(scope="module")
async def pipeline(
    environments: EnvironmentFactory, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    environment = await environments("throughput")
    running = Pipeline(
        environment,
        simulator.base_url,
        tmp_path_factory.mktemp("logs"),
        extra_env={"RESPONDER_SEND_RATE": str(SEND_RATE)},
    )
    async with running.started("router-2", "responder-2"):
        yield running


async def wait_for_replies(simulator: Simulator, wamids: list[str], timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(replies_by_wamid(simulator)[w] for w in wamids):
        assert loop.time() < deadline, "not every message was answered"
        await asyncio.sleep(0.1)


async def test_meta_throttling_slows_the_sender_and_everything_is_delivered(
    pipeline: Pipeline, simulator: Simulator
) -> None:
    simulator.clear()
    simulator.inject_faults([{"http_status": 429, "code": 130429, "count": 3}])
    hooks = citizen_messages(30, citizens=30, prefix="8240")
    await deliver(pipeline.webhook_url, APP_SECRET, hooks)
    await wait_for_replies(simulator, [w for hook in hooks for w in hook.wamids])

    attempts = simulator.sent(include_failed=True)
    throttled = [a for a in attempts if a.error_code == 130429]
    assert len(throttled) == 3
    first = throttled[0].received_at
    after = sorted(a.received_at for a in attempts if a.accepted and a.received_at > first)
    assert after
    # Meta's 130429 pushed the shared schedule back by PENALTY_SECONDS. Sends given their slot
    # before that was written still go: those already on their way from the throttled
    # replica, and the slots the other replica had reserved (at most RESERVATION, about 90 ms
    # at this rate). Then the sending pauses; without the pause, these 30 sends would all
    # have gone within about a third of a second.
    gaps = [later - earlier for earlier, later in itertools.pairwise([first, *after])]
    paused = [i for i, gap in enumerate(gaps) if gap >= PENALTY_SECONDS * 0.9]
    assert paused, f"no pause after Meta's 130429: {gaps}"
    assert paused[0] <= 2 * RESERVATION, f"{paused[0]} sends went before the pause: {gaps}"


async def test_one_citizens_quick_messages_are_answered_in_order(
    pipeline: Pipeline, simulator: Simulator
) -> None:
    simulator.clear()
    citizen = "821066660000"
    questions = [
        "투표소 위치 알려주세요",
        "대피소 어디예요?",
        "백신 접종 어디서 하나요?",
        "여권 갱신하려면?",
        "식량 지원 신청",
        "운영시간 알려주세요",
        "도움말",
        "투표 시간은?",
        "대피소 위치",
        "백신",
    ]
    hooks = []
    for text in questions:
        body, wamid = text_message_webhook(wa_id=citizen, text=text)
        hooks.append(Webhook(body, (wamid,)))
    # Sent one after another, as fast as ingress answers: the order Meta would deliver them.
    await deliver(pipeline.webhook_url, APP_SECRET, hooks, concurrency=1)
    wamids = [w for hook in hooks for w in hook.wamids]
    await wait_for_replies(simulator, wamids)

    answered = [
        s.body["context"]["message_id"]
        for s in simulator.sent(to=citizen)
        if isinstance(s.body.get("context"), dict)
    ]
    assert answered == wamids
