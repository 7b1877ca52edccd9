"""`/healthz`, `/readyz` and Prometheus `/metrics`, served by every service.

Liveness never depends on the broker or the database: a blip there must not make Kubernetes
restart every pod at once. Readiness does, so traffic and scaling follow what can really work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadinessCheck = Callable[[], Awaitable[bool]]
READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])


def add_health_routes(app: web.Application) -> None:
    app[READINESS_CHECKS] = {}
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)


def register_readiness(app: web.Application, name: str, check: ReadinessCheck) -> None:
    app[READINESS_CHECKS][name] = check


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def _readyz(request: web.Request) -> web.Response:
    results: dict[str, bool] = {}
    for name, check in request.app[READINESS_CHECKS].items():
        try:
            results[name] = await check()
        except Exception:
            results[name] = False
    ready = all(results.values())
    return web.Response(
        body=orjson.dumps({"ready": ready, "checks": results}),
        status=200 if ready else 503,
        content_type="application/json",
    )


async def _metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
