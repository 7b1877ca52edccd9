"""A sender Meta refuses outright is paused: while it is, one send per probe interval asks Meta
again and the others are refused without a call; a send started since then that Meta takes, or
refuses for that message alone, ends the pause."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest

from civicline.responder.graph import GraphError, SendResult
from civicline.responder.pauses import REFUSED_AT, PausingGraph, SenderPauses

NUMBER = "1234567890"
EXPIRED = GraphError("Error validating access token", http_status=401, code=190)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Meta:
    """Answers each send with the next of `answers` (an error raised, or a wamid)."""

    def __init__(self, *answers: GraphError | str) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, GraphError):
            raise answer
        return SendResult(wamid=answer, wa_id="82", raw={})


def refused_at(number: str) -> float:
    return REFUSED_AT.labels(number)._value.get()  # type: ignore[no-any-return]


async def attempt(graph: PausingGraph, number: str = NUMBER) -> GraphError | str:
    try:
        return (await graph.send(number, {"to": "82"})).wamid
    except GraphError as exc:
        return exc


async def test_a_paused_number_asks_meta_once_per_probe_until_it_takes_a_send() -> None:
    clock = Clock()
    meta = Meta(EXPIRED, EXPIRED, "wamid.ok", "wamid.next")
    pauses = SenderPauses(probe_every=2.0, clock=clock)
    graph = PausingGraph(meta, pauses)
    number = "1234567001"  # the gauge is the process's: a number of this test's own

    before = time.time()
    first = await attempt(graph, number)
    assert isinstance(first, GraphError)
    assert first.pauses
    assert before <= refused_at(number) <= time.time()  # what the alert watches
    assert graph.paused(number)  # the handler waits without a slot or a claim
    # Until the probe is due, sends are refused here with Meta's refusal, never sent.
    for _ in range(50):
        refused = await attempt(graph, number)
        assert isinstance(refused, GraphError)
        assert (refused.code, refused.http_status, refused.pauses) == (190, 401, True)
        assert not refused.ambiguous  # nothing went: safe to send later
    assert meta.calls == 1
    clock.now += 2.0
    assert not graph.paused(number)  # the probe is due: it goes the whole way
    assert isinstance(await attempt(graph, number), GraphError)  # Meta still refuses
    assert isinstance(await attempt(graph, number), GraphError)  # the next waits its turn
    assert meta.calls == 2
    clock.now += 2.0
    assert await attempt(graph, number) == "wamid.ok"  # people fixed the token
    assert not pauses.is_paused(number)
    assert await attempt(graph, number) == "wamid.next"  # every send goes again
    assert meta.calls == 4


@pytest.mark.parametrize(
    ("answer", "still_paused"),
    [
        # Meta read the request and refused this message alone: the sender works again.
        (GraphError("Re-engagement message", http_status=400, code=131047), False),
        # No answer at all, or a transient or throttling code, says nothing about the token.
        (GraphError("no response from the Graph API", http_status=0, ambiguous=True), True),
        (GraphError("unexpected response: Service Unavailable", http_status=503), True),
        (GraphError("An unknown error occurred", http_status=500, code=1), True),
        (GraphError("Rate limit hit", http_status=400, code=130429), True),
    ],
)
async def test_what_a_probe_learns_from_an_error(answer: GraphError, still_paused: bool) -> None:
    clock = Clock()
    pauses = SenderPauses(probe_every=2.0, clock=clock)
    graph = PausingGraph(Meta(EXPIRED, answer), pauses)
    await attempt(graph)
    clock.now += 2.0
    assert await attempt(graph) is answer
    assert pauses.is_paused(NUMBER) is still_paused


async def test_an_error_about_one_message_does_not_pause_the_number() -> None:
    undeliverable = GraphError("Message undeliverable", http_status=400, code=131026)
    meta = Meta(undeliverable, "wamid.ok")
    pauses = SenderPauses(clock=Clock())
    graph = PausingGraph(meta, pauses)
    assert await attempt(graph) is undeliverable
    assert not pauses.is_paused(NUMBER)
    assert await attempt(graph) == "wamid.ok"
    assert meta.calls == 2


class Answers:
    """Meta answering each send when the test says so, in any order."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[GraphError | str]] = []

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        answer: asyncio.Future[GraphError | str] = asyncio.get_running_loop().create_future()
        self.pending.append(answer)
        outcome = await answer
        if isinstance(outcome, GraphError):
            raise outcome
        return SendResult(wamid=outcome, wa_id="82", raw={})


async def test_a_send_started_before_the_pause_does_not_end_it() -> None:
    # Two sends on their way; Meta refuses the second (the token was revoked between them)
    # and then takes the first, which it had read before: that says nothing about now.
    clock = Clock()
    meta = Answers()
    pauses = SenderPauses(probe_every=2.0, clock=clock)
    graph = PausingGraph(meta, pauses)
    earlier = asyncio.create_task(attempt(graph))
    later = asyncio.create_task(attempt(graph))
    await asyncio.sleep(0)
    clock.now += 0.5
    meta.pending[1].set_result(EXPIRED)
    assert await later is EXPIRED
    meta.pending[0].set_result("wamid.before")
    assert await earlier == "wamid.before"
    assert pauses.is_paused(NUMBER)


def test_a_due_probe_goes_to_one_waiting_reply_and_lapses_if_it_never_sends() -> None:
    clock = Clock()
    pauses = SenderPauses(probe_every=2.0, clock=clock)
    pauses.refused(NUMBER, EXPIRED, started=clock.now)
    assert pauses.held(NUMBER)
    clock.now += 2.0
    # Many held replies ask at once when the probe is due: one is let through to send.
    assert [pauses.held(NUMBER) for _ in range(5)] == [False, True, True, True, True]
    pauses.check(NUMBER)  # that reply's send goes to Meta
    with pytest.raises(GraphError):
        pauses.check(NUMBER)  # and no other
    clock.now += 2.0
    assert not pauses.held(NUMBER)  # given to a reply that then never sends (suppressed) ...
    clock.now += 2.0
    assert not pauses.held(NUMBER)  # ... it lapses, and the next reply gets one


async def test_a_refusal_of_a_send_started_before_the_pause_ended_does_not_pause_again() -> None:
    clock = Clock()
    meta = Answers()
    pauses = SenderPauses(probe_every=2.0, clock=clock)
    pauses.refused(NUMBER, EXPIRED, started=clock.now)
    clock.now += 2.0
    probe = asyncio.create_task(attempt(PausingGraph(meta, pauses)))
    await asyncio.sleep(0)
    assert pauses.is_paused(NUMBER)
    meta.pending[0].set_result("wamid.probe")
    assert await probe == "wamid.probe"  # the token works again
    assert not pauses.is_paused(NUMBER)
    # A send made with the old token before the fix, answered only now, changes nothing.
    pauses.refused(NUMBER, EXPIRED, started=clock.now - 1.0)
    assert not pauses.is_paused(NUMBER)
