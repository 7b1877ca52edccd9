"""The query API under stress: an export of 100,000 events streamed in bounded memory, and
malformed requests built by Hypothesis from the OpenAPI document's own parameters, none of which
may make the service fail (5xx)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from civicline.audit.adapters import append_batch, sign_tree_head
from civicline.audit.api import OPENAPI
from civicline.audit.checkpoint import Signer
from civicline.audit.core import AuditRecord
from support.audit_api import KEYS, ThreadedApi, create_token, serve_api
from support.audit_logs import fresh_database

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("limits.civicline.example/audit")
START = datetime(2026, 7, 18, tzinfo=UTC)
EXPORTED = 100_000


def records(first: int, count: int) -> list[AuditRecord]:
    """Every tenth event is about a citizen (sealed), the rest are not."""
    result = []
    for n in range(first, first + count):
        payload: dict[str, Any] = {"n": n, "text": "투표소 위치 " * 4, "intent": "voting"}
        if n % 10 == 0:
            payload["from"] = f"8210{n:08d}"
        result.append(
            AuditRecord(
                event_id=uuid.UUID(int=n + 1),
                kind="message.voting",
                occurred_at=START + timedelta(seconds=n),
                correlation_id=f"wamid.{n}",
                schema_version=1,
                payload=payload,
            )
        )
    return result


def resident_bytes() -> int:
    """This process's resident memory now (Linux), where server and client both run."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_an_export_of_100000_events_streams_in_bounded_memory() -> None:
    async with fresh_database("export") as url, serve_api(url) as api:
        # Two writers, as two audit replicas append: Python's hashing overlaps Postgres's work.
        starts = iter(range(0, EXPORTED, 5000))

        async def writer() -> None:
            for first in starts:
                await append_batch(api.pool, records(first, 5000), KEYS)

        await asyncio.gather(writer(), writer())
        await sign_tree_head(api.pool, SIGNER)
        token = await create_token(url, "exporter", "auditor")

        lines = received = 0
        baseline = peak = resident_bytes()
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{api.url}/v1/export",
                params={"from_seq": "0"},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 200
            assert response.content_type == "application/x-ndjson"
            async for chunk in response.content.iter_chunked(1 << 16):
                lines += chunk.count(b"\n")
                received += len(chunk)
                peak = max(peak, resident_bytes())
        # header, tree head, range proof, then every event
        assert lines == 3 + EXPORTED
        growth = peak - baseline
        mib = 2**20
        print(f"export: {received / mib:.0f} MiB streamed, resident memory +{growth / mib:.1f} MiB")
        # The export is ~67 MiB, its rows as Python objects several times that: holding either
        # would show here; streaming in chunks of 1,000 rows stays within a few MiB.
        assert received > 50 * mib
        assert growth < 32 * mib


# --- malformed input, from the OpenAPI document ---------------------------------------------

DOCUMENT: dict[str, Any] = orjson.loads(OPENAPI)
OPERATIONS = [
    (path, method, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
]

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=500, max_size=700),
    st.sampled_from(
        ["", "0", "-1", "1e9", "9" * 40, "null", "2026-02-30T00:00:00Z", "\x00", "%00", "../"]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None, str]:
    path, method, operation = draw(st.sampled_from(OPERATIONS))
    names = [p["name"] for p in operation["parameters"] if p["in"] == "query"]
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    params = {name: draw(hostile_text) for name in chosen}
    if draw(st.booleans()) and draw(st.booleans()):
        params[draw(st.text(min_size=1, max_size=10))] = draw(hostile_text)
    if "{ref}" in path:
        path = path.replace("{ref}", urllib.parse.quote(draw(hostile_text) or "x", safe=""))
    body = None
    if method == "post":
        json_values = st.recursive(
            # orjson encodes 64-bit integers; a bigger one arrives as raw bytes below.
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=6,
        )
        document = draw(st.one_of(json_values, st.fixed_dictionaries({"citizen": hostile_text})))
        body = draw(
            st.one_of(
                st.just(orjson.dumps(document)),
                st.binary(max_size=50),
                st.just(b'{"citizen": 123456789012345678901234567890}'),
            )
        )
    role = draw(st.sampled_from(["auditor", "operator"]))
    return path, method.upper(), params, body, role


@pytest.fixture(scope="module")
async def fuzz_database() -> AsyncIterator[tuple[str, dict[str, str]]]:
    async with fresh_database("fuzz") as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
        try:
            await append_batch(pool, records(0, 30), KEYS)
            await sign_tree_head(pool, SIGNER)
        finally:
            await pool.close()
        tokens = {
            role: await create_token(url, f"fuzz-{role}", role) for role in ("auditor", "operator")
        }
        yield url, tokens


@pytest.fixture(scope="module")
def fuzz_api(fuzz_database: tuple[str, dict[str, str]]) -> Iterator[tuple[str, dict[str, str]]]:
    url, tokens = fuzz_database
    with ThreadedApi(url) as api:
        yield api.url, tokens


def send(
    url: str, method: str, params: dict[str, str], body: bytes | None, headers: dict[str, str]
) -> int:
    target = url + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(target, data=body, method=method, headers=headers)  # noqa: S310 (our own server)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_malformed_requests_never_fail_the_service(
    fuzz_api: tuple[str, dict[str, str]],
    request: tuple[str, str, dict[str, str], bytes | None, str],
) -> None:
    base, tokens = fuzz_api
    path, method, params, body, role = request
    headers = {"Authorization": f"Bearer {tokens[role]}", "Content-Type": "application/json"}
    status = send(base + path, method, params, body, headers)
    assert status in {200, 400, 403, 404, 409}, (path, params, body, status)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(authorization=st.text(max_size=80).filter(lambda s: "\n" not in s and "\r" not in s))
@example(authorization="\t")  # found by hypothesis: whitespace, so no credentials at all
@example(authorization="Bearer\tnot-a-token")
@example(authorization="Bearer \x01")
def test_malformed_credentials_are_401(
    fuzz_api: tuple[str, dict[str, str]], authorization: str
) -> None:
    base, _ = fuzz_api
    try:
        authorization.encode("latin-1")
    except UnicodeEncodeError:
        authorization = authorization.encode("utf-8").decode("latin-1")
    status = send(base + "/v1/events", "GET", {}, None, {"Authorization": authorization})
    # Control characters other than a tab are not allowed in a header value (RFC 9110,
    # 5.5): aiohttp refuses those requests first. A tab is whitespace, as a space is.
    malformed = any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in authorization)
    assert status == (400 if malformed else 401)
