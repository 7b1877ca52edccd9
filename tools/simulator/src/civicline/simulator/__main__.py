"""`civicline-simulator`: serve Meta's Graph API locally, or play a citizen texting the ingress.

civicline-simulator serve [--host H] [--port P] [--access-token T] [--enforce-window]
                          [--statuses-to WEBHOOK_URL [--secret S]]
civicline-simulator send --text "투표소 위치 알려주세요" [--from WA_ID] [--wait SECONDS]
civicline-simulator send --location 37.4979,127.0276 [--user-id KR.1234] …
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from civicline.simulator.client import send_webhook
from civicline.simulator.receipts import Receipts
from civicline.simulator.server import Simulator
from civicline.simulator.webhooks import (
    DEFAULT_PHONE_NUMBER_ID,
    location_message_webhook,
    text_message_webhook,
)

log = logging.getLogger("civicline.simulator")

DEFAULT_SIMULATOR_PORT: Final = 8090
DEFAULT_INGRESS_PORT: Final = 8080
DEFAULT_CITIZEN: Final = "821052347781"
_POLL_INTERVAL: Final = 0.2


class CliError(Exception):
    """A problem the user can fix (configuration, an unreachable peer); exits with status 2."""


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """`NAME`, or the stripped contents of the file named by `NAME_FILE` (not both)."""
    direct, path = env.get(name), env.get(f"{name}_FILE")
    if direct and path:
        raise CliError(f"set either {name} or {name}_FILE, not both")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from None
    return direct or None


def resolve_app_secret(explicit: str | None, env: Mapping[str, str]) -> str:
    """The secret to sign with: `--secret`, else the first of WHATSAPP_APP_SECRET's list."""
    value = explicit if explicit is not None else read_secret(env, "WHATSAPP_APP_SECRET")
    # WHATSAPP_APP_SECRET may list several secrets during a rotation; Meta signs with one.
    first = next((s.strip() for s in (value or "").split(",") if s.strip()), None)
    if first is None:
        raise CliError(
            "no app secret: pass --secret or set WHATSAPP_APP_SECRET (or WHATSAPP_APP_SECRET_FILE)"
        )
    return first


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise CliError(f"{name} must be a port number, got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="civicline-simulator",
        description="A local stand-in for Meta: the Graph API send endpoint and signed webhooks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the Graph API until SIGINT/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--port", type=int, help=f"default: $SIMULATOR_PORT or {DEFAULT_SIMULATOR_PORT}"
    )
    serve.add_argument(
        "--access-token",
        help="accept only this bearer token (default: $WHATSAPP_ACCESS_TOKEN[_FILE]; "
        "unset: any non-empty token)",
    )
    serve.add_argument(
        "--enforce-window",
        action="store_true",
        help="refuse free-form sends outside the citizen's 24-hour window (131047), as Meta does",
    )
    serve.add_argument(
        "--statuses-to",
        metavar="WEBHOOK_URL",
        help="after each accepted message, post its sent, delivered and read status webhooks "
        "here, signed like --secret, as Meta does (default: $SIMULATOR_STATUSES_TO; unset: none)",
    )
    serve.add_argument(
        "--secret",
        help="app secret to sign status webhooks with (default: first of "
        "$WHATSAPP_APP_SECRET[_FILE])",
    )

    send = commands.add_parser("send", help="send one signed citizen message and await the reply")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="the citizen's message")
    what.add_argument(
        "--location", type=_coordinates, help="share a location instead: LATITUDE,LONGITUDE"
    )
    send.add_argument("--from", dest="wa_id", default=DEFAULT_CITIZEN, help="citizen wa_id")
    send.add_argument(
        "--user-id",
        help="a citizen known only by a username: their business-scoped user id (no --from)",
    )
    send.add_argument("--name", help="the citizen's WhatsApp profile name")
    send.add_argument("--phone-number-id", default=DEFAULT_PHONE_NUMBER_ID)
    send.add_argument(
        "--webhook-url",
        help=f"default: http://127.0.0.1:${{INGRESS_PORT:-{DEFAULT_INGRESS_PORT}}}/webhook",
    )
    send.add_argument(
        "--secret",
        help="app secret to sign with (default: first of $WHATSAPP_APP_SECRET[_FILE])",
    )
    send.add_argument(
        "--simulator-url",
        help=f"default: http://127.0.0.1:${{SIMULATOR_PORT:-{DEFAULT_SIMULATOR_PORT}}}",
    )
    send.add_argument(
        "--wait",
        type=float,
        default=15.0,
        help="seconds to wait for the reply; 0 sends without waiting (default: 15)",
    )
    return parser


def _coordinates(value: str) -> tuple[float, float]:
    try:
        latitude, longitude = (float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LATITUDE,LONGITUDE, got {value!r}") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise argparse.ArgumentTypeError(f"{value!r} is not a place on Earth")
    return latitude, longitude


@dataclass(frozen=True, slots=True)
class SendOptions:
    text: str | None
    wa_id: str
    profile_name: str | None
    phone_number_id: str
    webhook_url: str
    simulator_url: str
    wait: float
    secret: str = field(repr=False)
    location: tuple[float, float] | None = None
    user_id: str | None = None

    @property
    def citizen(self) -> str:
        """Who the reply goes to: the business-scoped user id, else the wa_id."""
        return self.user_id or self.wa_id

    def webhook(self) -> tuple[bytes, str]:
        wa_id = None if self.user_id else self.wa_id
        if self.location is not None:
            latitude, longitude = self.location
            return location_message_webhook(
                latitude=latitude,
                longitude=longitude,
                wa_id=wa_id,
                user_id=self.user_id,
                profile_name=self.profile_name,
                phone_number_id=self.phone_number_id,
            )
        return text_message_webhook(
            wa_id=wa_id,
            user_id=self.user_id,
            text=self.text or "",
            profile_name=self.profile_name,
            phone_number_id=self.phone_number_id,
        )


async def serve(
    host: str,
    port: int,
    access_token: str | None,
    *,
    enforce_window: bool = False,
    statuses: tuple[str, str] | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM, then close the listener and exit cleanly. With
    `statuses` (webhook URL, app secret), accepted messages get their status webhooks."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    receipts = Receipts(*statuses) if statuses is not None else None
    try:
        async with Simulator(
            host, port, access_token=access_token, enforce_window=enforce_window, receipts=receipts
        ) as sim:
            log.info(
                "serving the Graph API on %s (bearer token check: %s; status webhooks: %s)",
                sim.base_url,
                "configured token" if access_token else "any non-empty token",
                receipts.webhook_url if receipts is not None else "none",
            )
            await stop.wait()
            log.info("stopping: %s", sim.stats())
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def _reply_text(send: Mapping[str, Any]) -> str:
    """What the citizen would see, as text: menus with their choices, pins with coordinates;
    anything else as the JSON that was sent."""
    body = send.get("body", {})
    kind = body.get("type", "text")
    content = body.get(kind)
    if not isinstance(content, dict):
        return json.dumps(body, ensure_ascii=False, indent=2)
    if kind == "text" and isinstance(content.get("body"), str):
        return str(content["body"])
    if kind == "interactive":
        return _interactive_text(content)
    if kind == "location":
        place = [str(content[k]) for k in ("name", "address") if content.get(k)]
        place.append(f"📍 {content.get('latitude')}, {content.get('longitude')}")
        return "\n".join(place)
    if kind == "template":
        language = (content.get("language") or {}).get("code")
        parameters = [
            str(p.get("text"))
            for c in content.get("components", [])
            for p in c.get("parameters", [])
            if p.get("type") == "text"
        ]
        return f"[template {content.get('name')} ({language})] " + " | ".join(parameters)
    return json.dumps(body, ensure_ascii=False, indent=2)


def _interactive_text(interactive: Mapping[str, Any]) -> str:
    lines = [
        str(part["text"])
        for part in (interactive.get("header"), interactive.get("body"))
        if isinstance(part, dict) and part.get("text")
    ]
    action = interactive.get("action") or {}
    for button in action.get("buttons", []):
        reply = button.get("reply", {})
        lines.append(f"  [{reply.get('title')}]  (id {reply.get('id')})")
    if action.get("sections"):
        lines.append(f"  ≡ {action.get('button')}")
    for section in action.get("sections", []):
        if section.get("title"):
            lines.append(f"    {section['title']}")
        for row in section.get("rows", []):
            detail = f" – {row['description']}" if row.get("description") else ""
            lines.append(f"    • {row.get('title')}{detail}  (id {row.get('id')})")
    footer = interactive.get("footer")
    if isinstance(footer, dict) and footer.get("text"):
        lines.append(str(footer["text"]))
    return "\n".join(lines)


async def _last_sequence(session: aiohttp.ClientSession, simulator_url: str) -> int:
    async with session.get(f"{simulator_url}/_sim/stats") as response:
        response.raise_for_status()
        stats = await response.json()
    return int(stats["last_sequence"])


async def _open_window(session: aiohttp.ClientSession, simulator_url: str, citizen: str) -> None:
    """The citizen writes now, which opens their 24-hour window (see `serve --enforce-window`)."""
    async with session.post(f"{simulator_url}/_sim/windows", json={"citizen": citizen}) as response:
        response.raise_for_status()


async def _wait_for_reply(
    session: aiohttp.ClientSession, options: SendOptions, wamid: str, after: int
) -> dict[str, Any] | None:
    """The first send to the citizen recorded after `after`, preferring one quoting `wamid`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.wait
    url = f"{options.simulator_url}/_sim/sent"
    query = {"to": options.citizen, "after": str(after)}
    while True:
        try:
            async with session.get(url, params=query) as response:
                sends: list[dict[str, Any]] = await response.json() if response.ok else []
        except (aiohttp.ClientError, TimeoutError):
            sends = []  # the simulator may be restarting; keep trying until the deadline
        if sends:
            quoting = [
                s for s in sends if (s["body"].get("context") or {}).get("message_id") == wamid
            ]
            return (quoting or sends)[0]
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(_POLL_INTERVAL)


async def send(options: SendOptions) -> int:
    """Post one signed citizen message; with `wait`, print the reply the simulator recorded."""
    body, wamid = options.webhook()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        after = 0
        if options.wait > 0:
            try:
                after = await _last_sequence(session, options.simulator_url)
                await _open_window(session, options.simulator_url, options.citizen)
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                raise CliError(
                    f"the simulator at {options.simulator_url} is not reachable ({exc}); "
                    "start it with `civicline-simulator serve`"
                ) from None
        try:
            status = await send_webhook(options.webhook_url, body, options.secret, session=session)
        except (aiohttp.ClientError, TimeoutError) as exc:
            print(f"error: cannot post to {options.webhook_url}: {exc}", file=sys.stderr)
            return 1
        print(f"webhook {wamid} from {options.citizen}: HTTP {status}")
        if status != 200:
            print(f"error: the ingress answered HTTP {status}, not 200", file=sys.stderr)
            return 1
        if options.wait <= 0:
            return 0
        reply = await _wait_for_reply(session, options, wamid, after)
    if reply is None:
        print(
            f"error: no reply to {options.citizen} recorded by the simulator within "
            f"{options.wait:g}s",
            file=sys.stderr,
        )
        return 1
    print(_reply_text(reply))
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of `civicline-simulator`; returns the process exit status."""
    source = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            logging.basicConfig(
                level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
            port = (
                args.port
                if args.port is not None
                else _port(source, "SIMULATOR_PORT", DEFAULT_SIMULATOR_PORT)
            )
            token = args.access_token or read_secret(source, "WHATSAPP_ACCESS_TOKEN")
            statuses_to = args.statuses_to or source.get("SIMULATOR_STATUSES_TO")
            statuses = (
                (statuses_to, resolve_app_secret(args.secret, source)) if statuses_to else None
            )
            return asyncio.run(
                serve(args.host, port, token, enforce_window=args.enforce_window, statuses=statuses)
            )
        ingress_port = _port(source, "INGRESS_PORT", DEFAULT_INGRESS_PORT)
        simulator_port = _port(source, "SIMULATOR_PORT", DEFAULT_SIMULATOR_PORT)
        options = SendOptions(
            text=args.text,
            location=args.location,
            user_id=args.user_id,
            wa_id=args.wa_id,
            profile_name=args.name,
            phone_number_id=args.phone_number_id,
            webhook_url=args.webhook_url or f"http://127.0.0.1:{ingress_port}/webhook",
            simulator_url=(args.simulator_url or f"http://127.0.0.1:{simulator_port}").rstrip("/"),
            wait=args.wait,
            secret=resolve_app_secret(args.secret, source),
        )
        return asyncio.run(send(options))
    except CliError as exc:
        print(f"civicline-simulator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
