"""Process entry point shared by every service: settings → logging → aiohttp app until SIGTERM.

`web.run_app` turns SIGTERM and SIGINT into a graceful shutdown: the HTTP server stops, then
the app's cleanup contexts run in reverse order, which is where consumers stop taking work,
drain in-flight messages and close their connections.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable

from aiohttp import web

from civicline.common.logging import configure_logging
from civicline.common.settings import Settings, SettingsError


def run_service(
    name: str,
    create_app: Callable[[Settings], web.Application],
    *,
    port: Callable[[Settings], int],
    require: Iterable[str] = (),
) -> None:
    try:
        settings = Settings.from_env(require=require, service_name=name)
    except SettingsError as exc:
        sys.exit(f"civicline-{name}: {exc}")
    configure_logging(name, settings.log_level)
    web.run_app(
        create_app(settings),
        host=settings.http_host,
        port=port(settings),
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux and macOS): the services spend most of their time in
    the event loop and socket I/O, which uvloop does in C; else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop wheels (Windows)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
