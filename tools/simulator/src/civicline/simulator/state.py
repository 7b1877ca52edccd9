"""What the simulator remembers: every send attempt, every read receipt, the scripted faults."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from civicline.simulator.meta_errors import describe
from civicline.simulator.validation import normalise_wa_id

# Meta's customer-service window (reference §6).
CUSTOMER_SERVICE_WINDOW_SECONDS: Final = 24 * 3600
# Request headers never kept: the access token must not leak into recordings or logs.
_UNRECORDED_HEADERS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def recordable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers worth keeping (e.g. idempotency keys), minus credentials."""
    return {str(k): str(v) for k, v in headers.items() if k.lower() not in _UNRECORDED_HEADERS}


def _same_recipient(recorded: str | None, wanted: str) -> bool:
    # `+82 10-…` and `8210…` name the same citizen, as Meta's contacts[].wa_id shows.
    if recorded is None:
        return False
    return recorded == wanted or (normalise_wa_id(recorded) or None) == normalise_wa_id(wanted)


def busiest_second(times: Iterable[float]) -> int:
    """The most events in any half-open one-second window (how Meta counts messages/s)."""
    ordered = sorted(times)
    busiest, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


@dataclass(frozen=True, slots=True)
class RecordedSend:
    """One POST /messages attempt: accepted (it has a wamid) or failed by an injected fault."""

    sequence: int
    received_at: float
    api_version: str
    phone_number_id: str
    body: Mapping[str, Any]
    wamid: str | None
    http_status: int
    error_code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.wamid is not None

    @property
    def to(self) -> str | None:
        recipient = self.body.get("to", self.body.get("recipient"))
        return recipient if isinstance(recipient, str) else None

    @property
    def type(self) -> str:
        return str(self.body.get("type", "text"))

    @property
    def callback_data(self) -> str | None:
        """`biz_opaque_callback_data`, which Meta repeats in the message's statuses."""
        value = self.body.get("biz_opaque_callback_data")
        return value if isinstance(value, str) else None

    @property
    def text(self) -> str | None:
        """The text body for text messages, else None."""
        text = self.body.get("text")
        if self.type == "text" and isinstance(text, Mapping):
            body = text.get("body")
            return body if isinstance(body, str) else None
        return None

    @property
    def reply_to(self) -> str | None:
        context = self.body.get("context")
        message_id = context.get("message_id") if isinstance(context, Mapping) else None
        return message_id if isinstance(message_id, str) else None

    def as_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "received_at": _iso(self.received_at),
            "api_version": self.api_version,
            "phone_number_id": self.phone_number_id,
            "to": self.to,
            "type": self.type,
            "accepted": self.accepted,
            "wamid": self.wamid,
            "http_status": self.http_status,
            "error_code": self.error_code,
            "body": dict(self.body),
            "headers": dict(self.headers),
        }


@dataclass(frozen=True, slots=True)
class RecordedRead:
    """One mark-as-read call (optionally with a typing indicator)."""

    sequence: int
    received_at: float
    api_version: str
    phone_number_id: str
    message_id: str
    typing_indicator: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "received_at": _iso(self.received_at),
            "api_version": self.api_version,
            "phone_number_id": self.phone_number_id,
            "message_id": self.message_id,
            "typing_indicator": self.typing_indicator,
        }


_FAULT_KEYS: Final = frozenset(
    {"http_status", "code", "count", "delay_ms", "to", "subcode", "details"}
)


def _optional_int(spec: Mapping[str, object], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"fault {key!r} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted answer for the next `count` sends (to `to`, if set).

    With a `code` the answer is Meta's error object for it (HTTP status from the §6 table unless
    given); with only `http_status` it is a bare HTTP error with a non-JSON body, as a proxy in
    front of Meta would give; with neither it only delays the send by `delay_ms`.
    """

    http_status: int | None = None
    code: int | None = None
    count: int = 1
    delay_ms: int = 0
    to: str | None = None
    subcode: int | None = None
    details: str | None = None

    @property
    def fails(self) -> bool:
        return self.http_status is not None

    @classmethod
    def from_mapping(cls, spec: Mapping[str, object]) -> Fault:
        """Build from the JSON accepted by `POST /_sim/faults`; ValueError names the problem."""
        unknown = set(spec) - _FAULT_KEYS
        if unknown:
            raise ValueError(
                f"unknown fault keys {sorted(unknown)}; allowed: {sorted(_FAULT_KEYS)}"
            )
        code = _optional_int(spec, "code")
        http_status = _optional_int(spec, "http_status")
        if http_status is None and code is not None:
            http_status = describe(code).http_status
        if http_status is not None and not 400 <= http_status <= 599:
            raise ValueError(f"fault http_status must be 400-599, got {http_status}")
        count = _optional_int(spec, "count")
        count = 1 if count is None else count
        delay_ms = _optional_int(spec, "delay_ms") or 0
        if count < 1 or delay_ms < 0:
            raise ValueError("fault count must be >= 1 and delay_ms >= 0")
        to, details = spec.get("to"), spec.get("details")
        if to is not None and not isinstance(to, str):
            raise ValueError("fault 'to' must be a string")
        if details is not None and not isinstance(details, str):
            raise ValueError("fault 'details' must be a string")
        return cls(
            http_status=http_status,
            code=code,
            count=count,
            delay_ms=delay_ms,
            to=to,
            subcode=_optional_int(spec, "subcode"),
            details=details,
        )

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class SimulatorState:
    """In-memory recordings and the fault script; one per app, used from one event loop."""

    def __init__(
        self,
        *,
        access_token: str | None = None,
        phone_number_ids: Iterable[str] | None = None,
        enforce_window: bool = False,
    ) -> None:
        self._access_token = access_token or None
        self.phone_number_ids = frozenset(phone_number_ids) if phone_number_ids else None
        # With enforce_window, free-form sends need an open 24-hour window (else 131047).
        self.enforce_window = enforce_window
        self._last_inbound: dict[str, float] = {}
        self._sends: list[RecordedSend] = []
        self._reads: list[RecordedRead] = []
        self._faults: list[Fault] = []
        self._sequence = itertools.count(1)
        self._last_sequence = 0
        self._counters: Counter[str] = Counter()
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        return (
            f"SimulatorState(sends={len(self._sends)}, reads={len(self._reads)}, "
            f"faults={len(self._faults)}, token_check={self._access_token is not None})"
        )

    @property
    def checks_token(self) -> bool:
        return self._access_token is not None

    def accepts_token(self, token: str) -> bool:
        """Any non-empty token, or exactly the configured one (compared in constant time)."""
        if not token:
            return False
        if self._access_token is None:
            return True
        return hmac.compare_digest(token.encode("utf-8"), self._access_token.encode("utf-8"))

    def next_sequence(self) -> int:
        self._last_sequence = next(self._sequence)
        return self._last_sequence

    def count(self, outcome: str) -> None:
        self._counters[outcome] += 1

    async def record_send(self, send: RecordedSend) -> None:
        self._sends.append(send)
        self.count("accepted" if send.accepted else "failed")
        async with self._changed:
            self._changed.notify_all()

    async def record_read(self, read: RecordedRead) -> None:
        self._reads.append(read)
        self.count("reads")
        async with self._changed:
            self._changed.notify_all()

    def sends(
        self, to: str | None = None, *, include_failed: bool = False, after: int = 0
    ) -> list[RecordedSend]:
        return [
            s
            for s in self._sends
            if (include_failed or s.accepted)
            and (to is None or _same_recipient(s.to, to))
            and s.sequence > after
        ]

    def reads(self) -> list[RecordedRead]:
        return list(self._reads)

    def add_faults(self, faults: Iterable[Fault]) -> None:
        self._faults.extend(faults)

    def pending_faults(self) -> list[Fault]:
        return list(self._faults)

    def clear_faults(self) -> int:
        cleared = len(self._faults)
        self._faults.clear()
        return cleared

    def open_window(self, citizen: str, at: float) -> None:
        """The citizen wrote at `at` (Unix seconds): their 24-hour window runs from then."""
        key = normalise_wa_id(citizen) or citizen
        self._last_inbound[key] = max(at, self._last_inbound.get(key, at))

    def window_open(self, citizen: str | None, now: float) -> bool:
        if citizen is None:
            return False
        last = self._last_inbound.get(normalise_wa_id(citizen) or citizen)
        return last is not None and now - last < CUSTOMER_SERVICE_WINDOW_SECONDS

    def take_fault(self, to: str | None) -> Fault | None:
        """Consume one use of the first scripted fault that applies to a send to `to`."""
        for index, fault in enumerate(self._faults):
            if fault.to is None or fault.to == to:
                if fault.count > 1:
                    self._faults[index] = dataclasses.replace(fault, count=fault.count - 1)
                else:
                    del self._faults[index]
                return fault
        return None

    def clear(self) -> int:
        """Forget sends, reads and counters (not the fault script); returns the sends dropped."""
        cleared = len(self._sends)
        self._sends.clear()
        self._reads.clear()
        self._counters.clear()
        return cleared

    def stats(self) -> dict[str, Any]:
        by_type = Counter(s.type for s in self._sends if s.accepted)
        by_number = Counter(s.phone_number_id for s in self._sends if s.accepted)
        return {
            "accepted": self._counters["accepted"],
            "failed": self._counters["failed"],
            "rejected": self._counters["rejected"],
            "unauthorized": self._counters["unauthorized"],
            "reads": self._counters["reads"],
            "pending_faults": sum(f.count for f in self._faults),
            "last_sequence": self._last_sequence,
            "by_type": dict(by_type),
            "by_phone_number_id": dict(by_number),
        }

    def summary(self, *, message_type: str | None = None, after: int = 0) -> dict[str, Any]:
        """Accepted sends (of `message_type`, after sequence `after`) counted without listing
        them: how many, to how many recipients, who got more than one, the busiest second,
        and per template name and language. For checking a 50,000-message broadcast."""
        sends = [
            s
            for s in self._sends
            if s.accepted
            and s.sequence > after
            and (message_type is None or s.type == message_type)
        ]
        recipients = Counter(s.to for s in sends)
        templates: Counter[str] = Counter()
        languages: Counter[str] = Counter()
        for send in sends:
            template = send.body.get("template")
            if isinstance(template, Mapping):
                templates[str(template.get("name"))] += 1
                language = template.get("language")
                if isinstance(language, Mapping):
                    languages[str(language.get("code"))] += 1
        times = [s.received_at for s in sends]
        return {
            "accepted": len(sends),
            "recipients": len(recipients),
            "duplicates": {to: n for to, n in recipients.items() if n > 1 and to is not None},
            "busiest_second": busiest_second(times),
            "first_at": _iso(min(times)) if times else None,
            "last_at": _iso(max(times)) if times else None,
            "seconds": max(times) - min(times) if times else 0.0,
            "by_template": dict(templates),
            "by_language": dict(languages),
            "last_sequence": self._last_sequence,
        }

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds, re-checked on every recorded send or read."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)
