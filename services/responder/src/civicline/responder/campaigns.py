"""Broadcast campaigns, the pure part: the operator's spec, the campaign's states, the messaging
tier, audience expansion in chunks, progress and the events that record it all. No I/O.

A campaign sends one approved template (the only thing WhatsApp delivers outside the 24-hour
window, reference §6) to an audience of topic subscribers and/or an uploaded list, each
recipient at most once, in their language where the template has it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from civicline.common.envelope import Envelope, event_id
from civicline.common.languages import language_candidates
from civicline.common.topics import Topics
from civicline.common.topology import (
    BROADCAST_FAILED,
    BROADCAST_IN_DOUBT,
    BROADCAST_JOB,
    BROADCAST_SENT,
    BROADCAST_SKIPPED,
    broadcast_status_key,
    campaign_callback,
    campaign_key,
)
from civicline.responder.catalog import Reply, Template, to_graph_message

T = TypeVar("T")

STATES: Final = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
FINAL_STATES: Final = frozenset({"completed", "cancelled"})
# Recipients: queued -> claimed -> sending -> sent -> delivered -> read; or failed, in_doubt,
# skipped, cancelled. Meta's statuses may arrive out of order: a state only ever moves forward.
_DELIVERY_RANK: Final = {"sent": 1, "delivered": 2, "read": 3}
UNSETTLED: Final = frozenset({"queued", "claimed", "sending"})

_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
_TEMPLATE_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2}|_[A-Z][a-z]{3})?")
_CITIZEN_LANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{1,8})*")
_BAD_PARAMETER = re.compile(r"[\n\t]| {5,}")
_WA_ID = re.compile(r"\+?[0-9][0-9 \-]{5,30}")
_SPEC_KEYS = frozenset({"name", "phone_number_id", "template", "audience", "send_at"})
_TEMPLATE_KEYS = frozenset({"name", "languages", "fallback", "parameters"})
_AUDIENCE_KEYS = frozenset({"topics", "list"})


class SpecError(ValueError):
    """The campaign spec is not valid; the message lists every problem."""


class TransitionError(ValueError):
    """The action is not allowed in the campaign's current state."""


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    name: str
    phone_number_id: str
    template: str
    # citizen language ("ko", "en") -> the template's approved language code ("ko", "en_US")
    languages: Mapping[str, str]
    fallback_language: str
    # template language code -> parameters; "*" holds those for every language
    parameters: Mapping[str, tuple[str, ...]]
    topics: tuple[str, ...] = ()
    use_list: bool = False
    send_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phone_number_id": self.phone_number_id,
            "template": {
                "name": self.template,
                "languages": dict(self.languages),
                "fallback": self.fallback_language,
                "parameters": {k: list(v) for k, v in self.parameters.items()},
            },
            "audience": {"topics": list(self.topics), "list": self.use_list},
            "send_at": self.send_at.isoformat() if self.send_at else None,
        }

    @property
    def sources(self) -> int:
        """Audience sources walked by the expansion: each topic, then the uploaded list."""
        return len(self.topics) + (1 if self.use_list else 0)

    def source_topic(self, index: int) -> str | None:
        """The topic of audience source `index`, or None for the uploaded list."""
        return self.topics[index] if index < len(self.topics) else None


def parse_spec(document: object, topics: Topics) -> CampaignSpec:
    """Validate an operator's campaign spec (JSON or TOML decoded), naming every problem."""
    problems: list[str] = []
    if not isinstance(document, Mapping):
        raise SpecError("a campaign spec must be an object")
    unknown = set(document) - _SPEC_KEYS
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)} (allowed: {sorted(_SPEC_KEYS)})")
    name = document.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        problems.append("name must be a non-empty string of at most 200 characters")
    phone_number_id = document.get("phone_number_id")
    if not isinstance(phone_number_id, str) or not phone_number_id.isdigit():
        problems.append("phone_number_id must be the sending number's id (digits)")
    template = document.get("template")
    template_name, fallback = "", ""
    languages: dict[str, str] = {}
    parameters: dict[str, tuple[str, ...]] = {}
    if not isinstance(template, Mapping):
        problems.append("template must be an object with name, languages, fallback, parameters")
    else:
        template_name, languages, fallback, parameters = _template(template, problems)
    audience = document.get("audience")
    chosen_topics: list[str] = []
    use_list = False
    if not isinstance(audience, Mapping):
        problems.append("audience must be an object with topics and/or list")
    else:
        if set(audience) - _AUDIENCE_KEYS:
            problems.append(f"audience: unknown keys {sorted(set(audience) - _AUDIENCE_KEYS)}")
        raw_topics = audience.get("topics", [])
        if not isinstance(raw_topics, list) or not all(isinstance(t, str) for t in raw_topics):
            problems.append("audience.topics must be a list of topic names")
        else:
            known = ", ".join(topics.topics)
            problems.extend(
                f"audience.topics: unknown topic {topic!r} (known: {known})"
                for topic in raw_topics
                if topic not in topics
            )
            chosen_topics = list(dict.fromkeys(raw_topics))
        use_list = audience.get("list", False) is True
        if not chosen_topics and not use_list:
            problems.append("audience needs topics, or list = true and an uploaded list")
    send_at = document.get("send_at")
    moment: datetime | None = None
    if isinstance(send_at, datetime):
        moment = send_at
    elif isinstance(send_at, str):
        try:
            moment = datetime.fromisoformat(send_at)
        except ValueError:
            problems.append(f"send_at {send_at!r} is not an ISO 8601 time")
    elif send_at is not None:
        problems.append("send_at must be an ISO 8601 time with a UTC offset")
    if moment is not None and moment.tzinfo is None:
        problems.append("send_at needs a UTC offset (e.g. 2026-11-27T09:00:00+09:00)")
    if problems:
        raise SpecError("invalid campaign spec:\n  - " + "\n  - ".join(problems))
    assert isinstance(name, str)
    assert isinstance(phone_number_id, str)
    return CampaignSpec(
        name=name.strip(),
        phone_number_id=phone_number_id,
        template=template_name,
        languages=languages,
        fallback_language=fallback,
        parameters=parameters,
        topics=tuple(chosen_topics),
        use_list=use_list,
        send_at=moment,
    )


def _template(
    template: Mapping[str, Any], problems: list[str]
) -> tuple[str, dict[str, str], str, dict[str, tuple[str, ...]]]:
    if set(template) - _TEMPLATE_KEYS:
        problems.append(f"template: unknown keys {sorted(set(template) - _TEMPLATE_KEYS)}")
    name = template.get("name")
    if not isinstance(name, str) or not _TEMPLATE_NAME.fullmatch(name):
        problems.append("template.name must be an approved template's name (a-z, 0-9, _)")
        name = ""
    fallback = template.get("fallback")
    if not isinstance(fallback, str) or not _TEMPLATE_LANGUAGE.fullmatch(fallback):
        problems.append("template.fallback must be a template language code such as en_US")
        fallback = ""
    raw_languages = template.get("languages", {})
    languages: dict[str, str] = {}
    if not isinstance(raw_languages, Mapping):
        problems.append("template.languages must map citizen languages to template languages")
    else:
        for citizen, code in raw_languages.items():
            if not _CITIZEN_LANGUAGE.fullmatch(citizen):
                problems.append(f"template.languages: {citizen!r} is not a language such as ko")
            elif not isinstance(code, str) or not _TEMPLATE_LANGUAGE.fullmatch(code):
                problems.append(f"template.languages.{citizen}: {code!r} is not like ko or en_US")
            else:
                languages[citizen] = code
    raw_parameters = template.get("parameters", [])
    parameters: dict[str, tuple[str, ...]] = {}
    if isinstance(raw_parameters, list):
        parameters["*"] = _parameters("template.parameters", raw_parameters, problems)
    elif isinstance(raw_parameters, Mapping):
        for code, values in raw_parameters.items():
            parameters[code] = _parameters(f"template.parameters.{code}", values, problems)
        # "*" holds the parameters of every language not listed.
        codes = set() if "*" in parameters else {*languages.values(), fallback}
        problems.extend(
            f"template.parameters has none for language {code!r}"
            for code in sorted(codes - set(parameters))
        )
    else:
        problems.append("template.parameters must be a list, or an object per language")
    return name, languages, fallback, parameters


def _parameters(key: str, values: object, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        problems.append(f"{key} must be a list of non-empty strings")
        return ()
    problems.extend(
        f"{key}: {value!r} holds a newline, a tab or 5 spaces in a row"
        for value in values
        if _BAD_PARAMETER.search(value)
    )
    return tuple(values)


def template_language(spec: CampaignSpec, citizen_language: str | None) -> str:
    """The template language for a citizen: theirs where the template has it, else fallback."""
    for candidate in language_candidates(citizen_language or ""):
        if candidate in spec.languages:
            return spec.languages[candidate]
    return spec.fallback_language


def template_message(
    campaign_id: uuid.UUID, spec: CampaignSpec, wa_id: str, language: str
) -> dict[str, Any]:
    """The Graph API body sending the campaign's template to one recipient. It names the
    campaign in `biz_opaque_callback_data`, which Meta repeats in the message's statuses, so
    that only those are routed to the responder to join (topology.CAMPAIGN_CALLBACK_PREFIX)."""
    parameters = spec.parameters.get(language, spec.parameters.get("*", ()))
    reply = Reply(
        intent="broadcast",
        language=language,
        type="template",
        template=Template(name=spec.template, language=language, parameters=parameters),
    )
    return {
        **to_graph_message(reply, to=wa_id, reply_to=None),
        "biz_opaque_callback_data": campaign_callback(campaign_id),
    }


def parse_recipient_list(lines: Iterable[str]) -> Iterator[tuple[str, str | None]]:
    """(wa_id, language) from CSV lines `wa_id[,language]`; a header line and blank lines are
    skipped. Raises SpecError naming the first bad line."""
    for number, line in enumerate(lines, start=1):
        text = line.strip().lstrip("\ufeff")
        if not text or text.startswith("#"):
            continue
        wa_id, _, language = (part.strip().strip('"') for part in text.partition(","))
        if number == 1 and not _WA_ID.fullmatch(wa_id):
            continue  # a header such as "wa_id,language"
        if not _WA_ID.fullmatch(wa_id):
            raise SpecError(f"line {number}: {wa_id!r} is not a WhatsApp number")
        digits = "".join(ch for ch in wa_id if ch.isdigit())
        language = language.lower().replace("_", "-")
        if language and not _CITIZEN_LANGUAGE.fullmatch(language):
            raise SpecError(f"line {number}: {language!r} is not a language such as ko")
        yield digits, language or None


# --- the campaign's states -------------------------------------------------------------------

_TRANSITIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "schedule": {"draft": "scheduled"},
    "start": {"scheduled": "running"},
    "pause": {"scheduled": "paused", "running": "paused"},
    "resume": {"paused": "running"},
    "cancel": dict.fromkeys(("draft", "scheduled", "running", "paused"), "cancelled"),
    "complete": {"running": "completed"},
}
ACTIONS: Final = frozenset(_TRANSITIONS)
# What the audit log calls each change (`broadcast.campaign.<change>`).
CHANGE_OF_ACTION: Final = {
    "schedule": "scheduled",
    "start": "started",
    "pause": "paused",
    "resume": "resumed",
    "cancel": "cancelled",
    "complete": "completed",
}


def transition(state: str, action: str, *, started: bool = True) -> str:
    """The state after `action`; a paused campaign that never started resumes as scheduled."""
    allowed = _TRANSITIONS.get(action)
    if allowed is None:
        raise TransitionError(f"unknown action {action!r}")
    if state not in allowed:
        raise TransitionError(f"cannot {action} a campaign that is {state}")
    if action == "resume" and not started:
        return "scheduled"
    return allowed[state]


# --- expansion and the messaging tier ---------------------------------------------------------


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    if size < 1:
        raise ValueError("chunk size must be positive")
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where expansion stands: the audience source (a topic, then the list) and the last
    citizen taken from it; `done` once every source is walked."""

    source: int = 0
    citizen: str = ""
    done: bool = False


def advance(cursor: Cursor, page: Sequence[str], page_size: int, sources: int) -> Cursor:
    """The cursor after a page of citizens (in order) read from the current source: a short
    page means that source is exhausted, so expansion moves on to the next."""
    if len(page) >= page_size:
        return Cursor(cursor.source, page[-1])
    following = cursor.source + 1
    return Cursor(following, "", done=following >= sources)


def admit(
    candidates: Sequence[str], recently_reached: Iterable[str], used: int, tier: int | None
) -> tuple[list[str], list[str]]:
    """(admitted, deferred) under Meta's messaging tier: at most `tier` unique citizens get a
    business-initiated message in any rolling 24 h, of which `used` already did. A citizen
    reached in that window does not count again. `tier` None is unlimited."""
    if tier is None:
        return list(candidates), []
    reached = set(recently_reached)
    room = max(0, tier - used)
    admitted: list[str] = []
    deferred: list[str] = []
    for citizen in candidates:
        if citizen in reached:
            admitted.append(citizen)
        elif room > 0:
            admitted.append(citizen)
            reached.add(citizen)
            room -= 1
        else:
            deferred.append(citizen)
    return admitted, deferred


def broadcast_rate(rate: float, reply_reserve: float) -> float:
    """The send rate campaigns may use: the number's rate less the share kept for replies, so
    that a citizen's question never waits behind a broadcast's backlog."""
    return rate * (1.0 - reply_reserve)


def next_delivery_state(current: str, status: str) -> str | None:
    """The recipient's state after Meta's status, or None when it changes nothing (a late
    `delivered` after `read`, a status for a send not recorded as sent)."""
    if current not in _DELIVERY_RANK:
        return None
    if status == "failed":
        return "failed"
    rank = _DELIVERY_RANK.get(status)
    if rank is None or rank <= _DELIVERY_RANK[current]:
        return None
    return status


# --- progress -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    queued: int
    sending: int
    sent: int  # accepted by Meta, including those since delivered or read
    delivered: int  # including those since read
    read: int
    failed: Mapping[str, int] = field(default_factory=dict)  # by error code
    in_doubt: int = 0
    skipped: Mapping[str, int] = field(default_factory=dict)  # by reason
    cancelled: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "queued": self.queued,
            "sending": self.sending,
            "sent": self.sent,
            "delivered": self.delivered,
            "read": self.read,
            "failed": dict(self.failed),
            "failed_total": sum(self.failed.values()),
            "in_doubt": self.in_doubt,
            "skipped": dict(self.skipped),
            "cancelled": self.cancelled,
        }


def summarise(rows: Iterable[tuple[str, str | None, int | None, int]]) -> Progress:
    """Progress from (state, reason, error_code, count) groups of a campaign's recipients.

    A failure after Meta accepted the send (a `failed` status) still counts as sent.
    """
    counts: dict[str, int] = {}
    failed: dict[str, int] = {}
    skipped: dict[str, int] = {}
    failed_after_sent = 0
    total = 0
    for state, reason, error_code, count in rows:
        total += count
        counts[state] = counts.get(state, 0) + count
        if state == "failed":
            code = str(error_code) if error_code is not None else "unknown"
            failed[code] = failed.get(code, 0) + count
            if reason == "after_sent":
                failed_after_sent += count
        elif state == "skipped":
            why = reason or "unknown"
            skipped[why] = skipped.get(why, 0) + count
    read = counts.get("read", 0)
    delivered = counts.get("delivered", 0) + read
    return Progress(
        total=total,
        queued=counts.get("queued", 0),
        sending=counts.get("claimed", 0) + counts.get("sending", 0),
        sent=counts.get("sent", 0) + delivered + failed_after_sent,
        delivered=delivered,
        read=read,
        failed=failed,
        in_doubt=counts.get("in_doubt", 0),
        skipped=skipped,
        cancelled=counts.get("cancelled", 0),
    )


# --- events ---------------------------------------------------------------------------------


def campaign_event(
    change: str, campaign_id: uuid.UUID, at: datetime, details: Mapping[str, Any]
) -> Envelope:
    """`broadcast.campaign.<change>`; the time is part of the id (a campaign may be paused
    and resumed many times)."""
    kind = campaign_key(change)
    return Envelope(
        event_id=event_id(kind, str(campaign_id), at.isoformat()),
        kind=kind,
        occurred_at=at,
        correlation_id=f"campaign:{campaign_id}",
        payload={"campaign_id": str(campaign_id), **details},
    )


def job_event(
    campaign_id: uuid.UUID, recipients: Sequence[tuple[str, str]], at: datetime
) -> Envelope:
    """`broadcast.job`: a chunk of recipients to send to, as (wa_id, template language)."""
    first = recipients[0][0] if recipients else ""
    return Envelope(
        event_id=event_id(BROADCAST_JOB, str(campaign_id), first, str(len(recipients))),
        kind=BROADCAST_JOB,
        occurred_at=at,
        correlation_id=f"campaign:{campaign_id}",
        payload={
            "campaign_id": str(campaign_id),
            "recipients": [[wa_id, language] for wa_id, language in recipients],
        },
    )


@dataclass(frozen=True, slots=True)
class Job:
    campaign_id: uuid.UUID
    recipients: tuple[tuple[str, str], ...]

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Job:
        """Raises KeyError/TypeError/ValueError on a payload of the wrong shape."""
        recipients = tuple((str(r[0]), str(r[1])) for r in payload["recipients"])
        return cls(uuid.UUID(payload["campaign_id"]), recipients)


def recipient_event(
    kind: str,
    campaign_id: uuid.UUID,
    wa_id: str,
    at: datetime,
    details: Mapping[str, Any],
) -> Envelope:
    """`broadcast.sent` / `.failed` / `.in_doubt` / `.skipped` for one recipient: one per
    recipient and campaign, whatever the redeliveries."""
    assert kind in (BROADCAST_SENT, BROADCAST_FAILED, BROADCAST_IN_DOUBT, BROADCAST_SKIPPED)
    wamid = details.get("wamid")
    return Envelope(
        event_id=event_id(kind, str(campaign_id), wa_id),
        kind=kind,
        occurred_at=at,
        correlation_id=wamid if isinstance(wamid, str) else f"campaign:{campaign_id}",
        payload={"campaign_id": str(campaign_id), "to": wa_id, **details},
    )


def delivery_event(
    campaign_id: uuid.UUID, wa_id: str, wamid: str, status: str, at: datetime, errors: object
) -> Envelope:
    """`broadcast.status.<state>`: Meta's status of a campaign message, joined to its campaign."""
    kind = broadcast_status_key(status)
    return Envelope(
        event_id=event_id(kind, wamid),
        kind=kind,
        occurred_at=at,
        correlation_id=wamid,
        payload={
            "campaign_id": str(campaign_id),
            "to": wa_id,
            "wamid": wamid,
            "status": status,
            "errors": errors if isinstance(errors, list) else [],
        },
    )
