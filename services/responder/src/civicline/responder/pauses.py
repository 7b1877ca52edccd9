"""A sender Meta refuses outright (reference §6: "pause the sender"), paused in one place.

An expired or revoked token (190, 0, a bare 401), a number blocked for policy violations (368)
or one not registered (133010) make Meta refuse every send of that number until people fix it,
which may take hours. The replies and campaign jobs wait meanwhile (handlers.py,
broadcasts.py); this gate keeps them from asking Meta again and again while they wait: once a
number is refused so, one send per `probe_every` seconds goes to Meta to learn whether it is
fixed, and every other send of that number in this process is refused here, with the same
error, without a call. A send started after the pause began that Meta takes, or refuses for a
fault of that message alone, ends the pause.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import Gauge

from civicline.responder.graph import GraphError, SendResult

log = structlog.get_logger(__name__)

# When Meta last refused the number outright (Unix time): alert while it is recent. A gauge of
# "paused now" would stay at 1 on a replica that never sends for the number again.
REFUSED_AT = Gauge(
    "civicline_responder_sender_refused_timestamp_seconds",
    "When Meta last refused every send of the number (token, blocked or unregistered number)",
    ["phone_number_id"],
)

# Seconds between the sends that ask Meta whether a paused number works again.
PROBE_SECONDS = 2.0


@dataclass(slots=True)
class _Pause:
    error: GraphError  # Meta's refusal that paused the number
    since: float
    next_probe: float
    # The due probe was given to a caller of `held` (until then), whose send's `check` lets
    # it through; one that never sends (its reply was suppressed, say) lets it lapse.
    probe_given_until: float = 0.0


class SenderPauses:
    """Which numbers Meta refuses outright, and when the next send may ask it again."""

    def __init__(
        self, *, probe_every: float = PROBE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._probe_every = probe_every
        self._clock = clock
        self._pauses: dict[str, _Pause] = {}
        self._resumed: dict[str, float] = {}  # when each number's last pause ended

    def now(self) -> float:
        return self._clock()

    def held(self, phone_number_id: str) -> bool:
        """The number is paused and a send now would be refused. When the next probe is due,
        the first caller gets it (False) and its send will go; the others are held."""
        pause = self._pauses.get(phone_number_id)
        if pause is None:
            return False
        now = self._clock()
        if now < pause.next_probe or now < pause.probe_given_until:
            return True
        pause.next_probe = pause.probe_given_until = now + self._probe_every
        return False

    def check(self, phone_number_id: str) -> None:
        """Raise the number's refusal if it is paused, unless this send is the next probe
        (which then goes, and the one after it waits `probe_every` again)."""
        pause = self._pauses.get(phone_number_id)
        if pause is None:
            return
        now = self._clock()
        if now < pause.probe_given_until:  # the send of the caller `held` gave the probe to
            pause.probe_given_until = 0.0
            return
        if now < pause.next_probe:
            error = pause.error
            raise GraphError(
                f"not sent, the sender has been paused for {now - pause.since:.0f} s: "
                f"{error.message}",
                http_status=error.http_status,
                code=error.code,
                subcode=error.subcode,
                fbtrace_id=error.fbtrace_id,
            )
        pause.next_probe = now + self._probe_every

    def refused(self, phone_number_id: str, error: GraphError, *, started: float) -> None:
        """Meta answered with `error` a send of the number started at `started`."""
        if error.pauses:
            if started < self._resumed.get(phone_number_id, float("-inf")):
                return  # went out before the pause ended: it says nothing about now
            REFUSED_AT.labels(phone_number_id).set(time.time())
            pause = self._pauses.get(phone_number_id)
            if pause is None:
                now = self._clock()
                self._pauses[phone_number_id] = _Pause(error, now, now + self._probe_every)
                log.error("sender_paused", phone_number_id=phone_number_id, error=str(error))
            else:
                pause.error = error
        elif error.code is not None and not error.retryable:
            # Meta read the request and found fault with this message alone (a closed
            # window, an unknown template), so the sender itself works. A transient or
            # throttling code, or no answer at all, says nothing about it.
            self.accepted(phone_number_id, started=started)

    def accepted(self, phone_number_id: str, *, started: float) -> None:
        """Meta took a send of the number started at `started`: if it started after the pause
        began, whatever paused the number is fixed."""
        pause = self._pauses.get(phone_number_id)
        if pause is None or started < pause.since:
            return
        del self._pauses[phone_number_id]
        self._resumed[phone_number_id] = self._clock()
        log.warning(
            "sender_resumed",
            phone_number_id=phone_number_id,
            paused_seconds=round(self._clock() - pause.since, 1),
        )

    def is_paused(self, phone_number_id: str) -> bool:
        return phone_number_id in self._pauses


class Sends(Protocol):
    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult: ...


class PausingGraph:
    """A Graph API client whose sends pass the number's pause gate first."""

    def __init__(self, graph: Sends, pauses: SenderPauses) -> None:
        self._graph = graph
        self._pauses = pauses

    def paused(self, phone_number_id: str) -> bool:
        """A send of the number now would be refused here (see SenderPauses.held)."""
        return self._pauses.held(phone_number_id)

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        self._pauses.check(phone_number_id)
        started = self._pauses.now()
        try:
            result = await self._graph.send(phone_number_id, message)
        except GraphError as exc:
            self._pauses.refused(phone_number_id, exc, started=started)
            raise
        self._pauses.accepted(phone_number_id, started=started)
        return result
