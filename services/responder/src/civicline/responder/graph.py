"""The WhatsApp Cloud API (Graph API) client the responder sends replies with.

It speaks HTTP to `{base_url}/{version}/{phone_number_id}/messages` (reference §5), so the same
code talks to Meta and to the local simulator. Every failure surfaces as one `GraphError` whose
`retryable` / `throttle` flags come from the single table below; retry policy lives with the
caller. The access token never appears in a repr, an exception message or a traceback local.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from civicline.common.failures import UpstreamPaused

TEXT_BODY_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """How the responder treats one Graph error code."""

    meaning: str
    retryable: bool
    throttle: bool = False
    # Not this message: the sender cannot send at all until people fix it (its token, its
    # number). Reference §6: "pause the sender"; work waits, as in any outage.
    pauses: bool = False


# The one classification table, from shared/reference/whatsapp-cloud-api.md §6 ("Errors, limits
# and the 24-hour window") and its courier throttle/retry sets. Codes 1 and 2 are the Graph API's
# generic "temporary, wait and retry" errors (developers.facebook.com/docs/graph-api/guides/
# error-handling). Anything not listed is permanent: retrying an error we do not understand
# risks sending a citizen the same reply twice.
ERROR_RULES: Final[Mapping[int, ErrorRule]] = MappingProxyType(
    {
        0: ErrorRule("auth exception", retryable=False, pauses=True),
        1: ErrorRule("Graph API unknown error (temporary)", retryable=True),
        2: ErrorRule("Graph API service temporarily unavailable", retryable=True),
        4: ErrorRule("app-level API call rate limit", retryable=True, throttle=True),
        100: ErrorRule("invalid parameter", retryable=False),
        190: ErrorRule("access token expired or invalid", retryable=False, pauses=True),
        368: ErrorRule("temporarily blocked for policy violations", retryable=False, pauses=True),
        80007: ErrorRule("WABA rate limit", retryable=True, throttle=True),
        130429: ErrorRule("throughput (messages/second) reached", retryable=True, throttle=True),
        131000: ErrorRule("unknown error", retryable=True),
        131008: ErrorRule("required parameter is missing", retryable=False),
        131009: ErrorRule("parameter value is not valid", retryable=False),
        131016: ErrorRule("service unavailable", retryable=True),
        131026: ErrorRule("message undeliverable", retryable=False),
        131047: ErrorRule("re-engagement: outside the 24-hour window", retryable=False),
        # "Do not retry quickly": not retried, but the sender should slow down (§6).
        131048: ErrorRule("spam rate limit", retryable=False, throttle=True),
        131049: ErrorRule("not delivered for healthy ecosystem engagement", retryable=False),
        131053: ErrorRule("media upload/download failed", retryable=True),
        # "Retry later to that user only" (§6): the message waits in its delay queue; the
        # number's schedule, shared by every citizen, is not slowed for one citizen's pair.
        131056: ErrorRule("pair rate limit (same recipient)", retryable=True),
        132000: ErrorRule("template parameter count mismatch", retryable=False),
        132001: ErrorRule("template does not exist", retryable=False),
        132018: ErrorRule("template parameter text refused", retryable=False),
        133010: ErrorRule("phone number not registered", retryable=False, pauses=True),
        133016: ErrorRule("register/deregister rate limit", retryable=True, throttle=True),
    }
)
RETRYABLE_CODES: Final = frozenset(code for code, rule in ERROR_RULES.items() if rule.retryable)
THROTTLE_CODES: Final = frozenset(code for code, rule in ERROR_RULES.items() if rule.throttle)
PAUSE_CODES: Final = frozenset(code for code, rule in ERROR_RULES.items() if rule.pauses)
# A gateway in front of Meta forwarded the request and got no good answer (Bad Gateway, Gateway
# Timeout).
GATEWAY_FAILURES: Final = frozenset({502, 504})


class SenderPaused(UpstreamPaused):
    """Meta refuses every send of this sender (expired token, blocked or unregistered number):
    the message waits, unsent, until people fix it."""


class GraphError(Exception):
    """A failed Graph API call. `http_status` is 0 when no HTTP answer arrived at all.

    `ambiguous` marks a call that got no answer after the request may have reached Meta (a
    timeout or a dropped connection, not a refused one): Meta may have accepted the message.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        details: str | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.details = details
        self.ambiguous = ambiguous

    @property
    def retryable(self) -> bool:
        """Worth trying again later: a transient code, or no code and no/5xx/429 answer."""
        if self.code is not None:
            return self.code in RETRYABLE_CODES
        return self.http_status == 0 or self.http_status == 429 or self.http_status >= 500

    @property
    def pauses(self) -> bool:
        """No message can go until people fix the sender: its token (also a bare HTTP 401) or
        its number."""
        if self.code is not None:
            return self.code in PAUSE_CODES
        return self.http_status == 401

    @property
    def throttle(self) -> bool:
        """Meta asks us to slow down (lower the send rate), whether or not to retry."""
        if self.code is not None:
            return self.code in THROTTLE_CODES
        return self.http_status == 429

    def __str__(self) -> str:
        code = f"code {self.code}" if self.code is not None else "no code"
        status = f"HTTP {self.http_status}" if self.http_status else "no HTTP response"
        trace = f" [fbtrace_id={self.fbtrace_id}]" if self.fbtrace_id else ""
        return f"Graph API error ({code}, {status}): {self.message}{trace}"

    def __repr__(self) -> str:
        return (
            f"GraphError(http_status={self.http_status}, code={self.code}, "
            f"subcode={self.subcode}, message={self.message!r}, fbtrace_id={self.fbtrace_id!r})"
        )

    def as_payload(self) -> dict[str, Any]:
        """The `error` object of an `outbound.failed` event (docs/events.md)."""
        return {
            "code": self.code,
            "http_status": self.http_status,
            "message": self.message,
            "fbtrace_id": self.fbtrace_id,
        }

    @classmethod
    def from_response(cls, http_status: int, body: bytes) -> GraphError:
        """Parse Meta's `{"error": {...}}` object; anything else keeps a short excerpt."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        error = document.get("error") if isinstance(document, dict) else None
        if not isinstance(error, dict):
            excerpt = body[:200].decode("utf-8", "replace").strip() or "(empty body)"
            # Not Meta's answer but a gateway's on the way. 502 and 504 say it passed the
            # request on and got no good answer back: Meta may have taken the message, so it
            # is in doubt, not sent again (at most one reply). 503 and the rest are retried.
            return cls(
                f"unexpected response: {excerpt}",
                http_status=http_status,
                ambiguous=http_status in GATEWAY_FAILURES,
            )
        error_data = error.get("error_data")
        details = error_data.get("details") if isinstance(error_data, dict) else None
        return cls(
            str(error.get("message") or "(no message)"),
            http_status=http_status,
            code=_int_or_none(error.get("code")),
            subcode=_int_or_none(error.get("error_subcode")),
            fbtrace_id=_str_or_none(error.get("fbtrace_id")),
            details=_str_or_none(details),
        )


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class SendResult:
    """An accepted send: Meta's id for our message and the recipient as Meta normalised it."""

    wamid: str
    wa_id: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def message_status(self) -> str | None:
        """`accepted`, or e.g. `held_for_quality_assessment` for templates (reference §5)."""
        messages = self.raw.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        status = first.get("message_status") if isinstance(first, dict) else None
        return status if isinstance(status, str) else None


def text_message(
    to: str, body: str, *, reply_to: str | None = None, preview_url: bool = False
) -> dict[str, Any]:
    """A text message body; `reply_to` quotes the citizen's message (context.message_id)."""
    if not body:
        raise ValueError("a text message needs a non-empty body")
    if len(body) > TEXT_BODY_MAX:
        raise ValueError(f"text body is {len(body)} characters; WhatsApp allows {TEXT_BODY_MAX}")
    message: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": preview_url, "body": body},
    }
    if reply_to is not None:
        message["context"] = {"message_id": reply_to}
    return message


class _Token:
    """Holds the access token so that no repr, log or traceback local can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "<redacted>"

    def authorization(self) -> str:
        return f"Bearer {self._value}"


_API_VERSION = re.compile(r"v\d+\.\d+")
# Seconds to open a connection to the Graph API (at most half the call's timeout).
CONNECT_TIMEOUT = 3.0
# aiohttp's errors raised before any byte of the request was written.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class GraphClient:
    """Sends messages and read receipts for one WhatsApp Business Account's numbers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_version: str,
        access_token: str,
        timeout: float = 10.0,
    ) -> None:
        if not access_token:
            raise ValueError("access_token is required")
        if not _API_VERSION.fullmatch(api_version):
            raise ValueError(f"api_version must look like 'v25.0', got {api_version!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._api_version = api_version
        self._token = _Token(access_token)
        # Connecting has a bound of its own, below the whole call's: a connection that was
        # never made carried no request, so its timeout is not ambiguous (a reply in doubt is
        # never sent again), while the whole call timing out after the request left is.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(CONNECT_TIMEOUT, timeout / 2)
        )

    def __repr__(self) -> str:
        return f"GraphClient(base_url={self._base_url!r}, api_version={self._api_version!r})"

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        """Send one message; raise GraphError unless Meta accepted it and returned its wamid.

        A timeout raises a retryable GraphError even though Meta may have accepted the message:
        the caller's idempotency record decides whether a retry is safe.
        """
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", **message}
        status, payload = await self._post(phone_number_id, body)
        messages = payload.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if not isinstance(wamid, str) or not wamid:
            # Meta answered 2xx: it may well have the message, under an id we cannot read.
            raise GraphError(
                "response carries no messages[0].id", http_status=status, ambiguous=True
            )
        contacts = payload.get("contacts")
        contact = contacts[0] if isinstance(contacts, list) and contacts else None
        wa_id = contact.get("wa_id") if isinstance(contact, dict) else None
        if not isinstance(wa_id, str) or not wa_id:
            wa_id = str(message.get("to") or message.get("recipient") or "")
        return SendResult(wamid=wamid, wa_id=wa_id, raw=payload)

    async def mark_read(
        self, phone_number_id: str, message_id: str, *, typing_indicator: bool = False
    ) -> None:
        """Mark the citizen's message (and earlier ones) read; optionally show typing (≤ 25 s)."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        }
        if typing_indicator:
            body["typing_indicator"] = {"type": "text"}
        status, payload = await self._post(phone_number_id, body)
        if payload.get("success") is not True:
            raise GraphError("mark-as-read was not confirmed with success=true", http_status=status)

    async def _post(
        self, phone_number_id: str, body: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        url = f"{self._base_url}/{self._api_version}/{quote(phone_number_id, safe='')}/messages"
        try:
            async with self._session.post(
                url,
                data=orjson.dumps(body),
                headers={
                    "Authorization": self._token.authorization(),
                    "Content-Type": "application/json",
                },
                timeout=self._timeout,
                allow_redirects=False,  # a redirect must not carry the bearer token elsewhere
            ) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # `from None`: the aiohttp frames underneath hold the request headers in their locals.
            detail = str(exc) or "timed out"
            raise GraphError(
                f"no response from the Graph API: {type(exc).__name__}: {detail}",
                http_status=0,
                ambiguous=not isinstance(exc, _NOT_SENT),
            ) from None
        if not 200 <= status < 300:
            raise GraphError.from_response(status, raw)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            # A 2xx: Meta may have taken the message; a body we cannot read does not say.
            raise GraphError(
                f"HTTP {status} with a body that is not a JSON object",
                http_status=status,
                ambiguous=True,
            )
        return status, payload
