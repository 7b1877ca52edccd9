"""The checked-in OpenAPI document and the routes the audit service serves agree: same paths
and methods, same query parameters, and every route has its roles."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from civicline.audit import query
from civicline.audit.api import OPENAPI, ROLES_FOR, AuditApi, add_api_routes
from civicline.audit.app import create_app
from civicline.common.settings import Settings

DOCUMENT: dict[str, Any] = orjson.loads(OPENAPI)


def served() -> dict[tuple[str, str], str]:
    app = web.Application()
    add_api_routes(app, AuditApi(None))
    routes = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and route.name is not None:
            routes[route.method.lower(), str(path)] = route.name
    return routes


def documented() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    }


def test_the_document_is_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["security"] == [{"bearer": []}]
    assert DOCUMENT["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_routes_and_document_agree() -> None:
    assert set(served()) == set(documented())
    for key, name in served().items():
        operation = documented()[key]
        names = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert names == set(query.PARAMETERS[name]), key
        assert {"401", "403"} <= set(operation["responses"]), key
        assert set(ROLES_FOR[name]) <= set(query.ROLES)
    assert set(ROLES_FOR) == set(served().values())


def test_every_reference_resolves() -> None:
    schemas = DOCUMENT["components"]["schemas"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                assert ref.removeprefix("#/components/schemas/") in schemas, ref
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOCUMENT)


def test_the_service_serves_the_api_beside_its_health_routes() -> None:
    app = create_app(Settings())
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert {"/healthz", "/v1/events", "/v1/openapi.json", "/v1/erasures"} <= paths
