"""A sender Meta refuses outright is paused: while it is, one send per probe interval asks Meta
again and the others are refused without a call; the first send Meta reads ends the pause."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from civicline.responder.graph import GraphError, SendResult
from civicline.responder.pauses import PAUSED, PausingGraph, SenderPauses

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


def paused_gauge() -> float | None:
    return PAUSED.labels(NUMBER)._value.get()  # type: ignore[no-any-return]


async def attempt(graph: PausingGraph) -> GraphError | str:
    try:
        return (await graph.send(NUMBER, {"to": "82"})).wamid
    except GraphError as exc:
        return exc


async def test_a_paused_number_asks_meta_once_per_probe_until_it_takes_a_send() -> None:
    clock = Clock()
    meta = Meta(EXPIRED, EXPIRED, "wamid.ok", "wamid.next")
    graph = PausingGraph(meta, SenderPauses(probe_every=2.0, clock=clock))

    first = await attempt(graph)
    assert isinstance(first, GraphError)
    assert first.pauses
    assert paused_gauge() == 1
    # Until the probe is due, sends are refused here with Meta's refusal, never sent.
    for _ in range(50):
        refused = await attempt(graph)
        assert isinstance(refused, GraphError)
        assert (refused.code, refused.http_status, refused.pauses) == (190, 401, True)
        assert not refused.ambiguous  # nothing went: safe to send later
    assert meta.calls == 1
    clock.now += 2.0
    assert isinstance(await attempt(graph), GraphError)  # the probe: Meta still refuses
    assert isinstance(await attempt(graph), GraphError)  # and the next waits for its turn
    assert meta.calls == 2
    clock.now += 2.0
    assert await attempt(graph) == "wamid.ok"  # people fixed the token
    assert paused_gauge() == 0
    assert await attempt(graph) == "wamid.next"  # every send goes again
    assert meta.calls == 4


@pytest.mark.parametrize(
    ("answer", "still_paused"),
    [
        # Meta read the request and refused this message alone: the sender works again.
        (GraphError("Re-engagement message", http_status=400, code=131047), False),
        # No answer at all says nothing about the token.
        (GraphError("no response from the Graph API", http_status=0, ambiguous=True), True),
        (GraphError("unexpected response: Service Unavailable", http_status=503), True),
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
