"""The auditors' query API (/v1) over real HTTP against a real Postgres: every filter, pagination
edges, proofs an auditor checks with the public key alone, conversations, exports verified
offline, tokens and roles, access events, and erasure that keeps every proof green."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from civicline.audit import merkle
from civicline.audit.adapters import append_batch, sign_tree_head
from civicline.audit.auditor import verify_database, verify_export
from civicline.audit.checkpoint import Signer, open_checkpoint
from civicline.audit.core import AuditRecord
from civicline.common.envelope import event_id
from support.audit_api import KEY_ENV, KEYS, RunningApi, create_token, serve_api
from support.audit_logs import fresh_database, run_audit_cli

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("api.civicline.example/audit")
START = datetime(2026, 7, 18, 9, 0, tzinfo=UTC)
ALICE, BOB, CAROL = "821011112222", "821033334444", "821055556666"
ALICE_WORDS = "투표소가 어디인가요"
FILLER = 45


def event(
    kind: str, correlation: str, payload: dict[str, Any], *, minutes: int = 0, key: str = ""
) -> AuditRecord:
    return AuditRecord(
        event_id=event_id(kind, correlation, key),
        kind=kind,
        occurred_at=START + timedelta(minutes=minutes),
        correlation_id=correlation,
        schema_version=1,
        payload=payload,
    )


def message(citizen: str, wamid: str, intent: str, text: str, *, minutes: int) -> AuditRecord:
    payload = {"wamid": wamid, "from": citizen, "text": text, "intent": intent, "language": "ko"}
    return event(
        f"message.{intent}", wamid, {**payload, "urgent": intent == "report_abuse"}, minutes=minutes
    )


def conversation_records(
    citizen: str, wamid: str, intent: str, text: str, minutes: int
) -> list[AuditRecord]:
    reply = f"{wamid}.reply"
    return [
        message(citizen, wamid, intent, text, minutes=minutes),
        event(
            "outbound.sent",
            wamid,
            {"in_reply_to": wamid, "to": citizen, "intent": intent, "wamid": reply},
            minutes=minutes,
        ),
        event(
            "status.delivered",
            reply,
            {"wamid": reply, "recipient_id": citizen, "status": "delivered"},
            minutes=minutes + 1,
        ),
        event(
            "status.read",
            reply,
            {"wamid": reply, "recipient_id": citizen, "status": "read"},
            minutes=minutes + 2,
        ),
    ]


def webhook(citizen: str, text: str) -> AuditRecord:
    body = orjson.dumps(
        {
            "entry": [
                {
                    "changes": [
                        {
                            "value": {
                                "contacts": [{"wa_id": citizen}],
                                "messages": [{"from": citizen, "text": {"body": text}}],
                            }
                        }
                    ]
                }
            ]
        }
    )
    raw_id = uuid.uuid5(uuid.NAMESPACE_URL, body.decode())
    return AuditRecord(
        event_id=raw_id,
        kind="inbound.webhook",
        occurred_at=START,
        correlation_id=str(raw_id),
        schema_version=1,
        payload={"bytes": len(body), "content_type": "application/json"},
        raw_body=body,
        signature="sha256=" + "ab" * 32,
    )


def filler(count: int, *, offset: int = 0) -> list[AuditRecord]:
    return [
        event(
            "inbound.rejected",
            f"filler-{offset + n}",
            {"reason": "test", "n": offset + n},
            minutes=600 + n,
        )
        for n in range(count)
    ]


@dataclass(frozen=True, slots=True)
class Setup:
    api: RunningApi
    database_url: str
    auditor: str
    operator: str


@pytest.fixture(scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with fresh_database("api") as url, serve_api(url) as api:
        records = [
            webhook(ALICE, ALICE_WORDS),
            *conversation_records(ALICE, "wamid.alice.1", "voting", ALICE_WORDS, 0),
            *conversation_records(ALICE, "wamid.alice.2", "report_abuse", "도와주세요", 60),
            event(
                "handoff.protection",
                "wamid.alice.2",
                {"citizen": ALICE, "text": "도와주세요", "intent": "report_abuse"},
                minutes=60,
            ),
            *conversation_records(BOB, "wamid.bob.1", "shelter", "대피소", 120),
            event(
                "outbound.failed",
                "wamid.bob.1",
                {
                    "in_reply_to": "wamid.bob.1",
                    "to": BOB,
                    "intent": "shelter",
                    "error": {"code": 131026},
                },
                minutes=121,
                key="failed",
            ),
            *conversation_records(CAROL, "wamid.carol.1", "voting", "carol's words", 180),
            *filler(FILLER),
        ]
        assert await append_batch(api.pool, records, KEYS) == len(records)
        assert await sign_tree_head(api.pool, SIGNER) is not None
        auditor = await create_token(url, "court-auditor", "auditor")
        operator = await create_token(url, "privacy-officer", "operator")
        yield Setup(api, url, auditor, operator)


async def call(
    setup: Setup,
    path: str,
    *,
    token: str | None = None,
    params: dict[str, str] | None = None,
    method: str = "GET",
    body: Any = None,
) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, setup.api.url + path, params=params, headers=headers, json=body
        ) as response,
    ):
        raw = await response.read()
        if response.content_type == "application/json":
            return response.status, orjson.loads(raw)
        return response.status, raw


async def events(setup: Setup, **params: str) -> list[dict[str, Any]]:
    status, page = await call(
        setup, "/v1/events", token=setup.auditor, params={**params, "limit": "1000"}
    )
    assert status == 200, page
    assert page["next_cursor"] is None
    return list(page["events"])


# --- authentication and roles ----------------------------------------------------------------


async def test_no_endpoint_answers_without_a_valid_token(setup: Setup) -> None:
    for path in ["/v1/events", "/v1/tree-heads", "/v1/openapi.json", "/v1/export", "/v1/events/0"]:
        status, body = await call(setup, path)
        assert status == 401, path
        assert "Bearer" in body["error"]
        status, body = await call(setup, path, token="cvl_not-a-token")
        assert status == 401, path
        assert "not valid" in body["error"]


async def test_roles_are_enforced_and_refusals_recorded(setup: Setup) -> None:
    status, body = await call(setup, "/v1/events", token=setup.operator)
    assert status == 403
    assert "auditor" in body["error"]
    status, body = await call(
        setup, "/v1/erasures", token=setup.auditor, method="POST", body={"citizen": CAROL}
    )
    assert status == 403
    refused = [e for e in await events(setup, kind="audit.access") if e["payload"]["status"] == 403]
    assert {(e["payload"]["token"], e["payload"]["endpoint"]) for e in refused} >= {
        ("privacy-officer", "events"),
        ("court-auditor", "erasures"),
    }
    # both roles may read what holds no citizen's data
    assert (await call(setup, "/v1/tree-heads", token=setup.operator))[0] == 200


async def test_a_revoked_token_stops_working(setup: Setup) -> None:
    token = await create_token(setup.database_url, "temporary", "auditor")
    assert (await call(setup, "/v1/tree-heads", token=token))[0] == 200
    env = {"CIVICLINE_DATABASE_URL": setup.database_url}
    code, output = await run_audit_cli("token", "list", env=env)
    assert code == 0
    assert "temporary\tauditor" in output
    assert token not in output
    code, output = await run_audit_cli("token", "revoke", "--name", "temporary", env=env)
    assert code == 0, output
    assert (await call(setup, "/v1/tree-heads", token=token))[0] == 401
    # only the token's hash is stored
    rows = await setup.api.pool.fetch("SELECT t::text AS row, token_hash FROM audit_api_token t")
    assert not any(token in row["row"] for row in rows)
    assert hashlib.sha256(token.encode()).digest() in {row["token_hash"] for row in rows}


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/v1/events", {"kinds": "message.voting"}, "unknown query parameter"),
        ("/v1/events", {"since": "last week"}, "RFC 3339"),
        ("/v1/events", {"limit": "0"}, "limit"),
        ("/v1/events", {"cursor": "garbage"}, "cursor"),
        ("/v1/events/not-an-id", {}, "seq"),
        ("/v1/consistency", {}, "first"),
        ("/v1/consistency", {"first": "1", "second": "999999"}, "the log has"),
        ("/v1/export", {"from_seq": "9", "to_seq": "3"}, "greater"),
        ("/v1/conversations", {}, "citizen"),
    ],
)
async def test_bad_input_is_a_clear_400(
    setup: Setup, path: str, params: dict[str, str], message: str
) -> None:
    status, body = await call(setup, path, token=setup.auditor, params=params)
    assert status == 400, body
    assert message in body["error"]


async def test_unknown_endpoints_are_json_404s(setup: Setup) -> None:
    status, body = await call(setup, "/v1/nothing", token=setup.auditor)
    assert status == 404
    assert "no such endpoint" in body["error"]
    status, body = await call(setup, "/v1/events/999999", token=setup.auditor)
    assert status == 404
    # looking for an event that is not there is an access too
    lookups = [e["payload"] for e in await events(setup, kind="audit.access")]
    assert {"seq": "999999"} in [p["query"] for p in lookups if p["status"] == 404]


# --- filters ---------------------------------------------------------------------------------


async def test_a_citizen_is_found_by_their_number_however_written(setup: Setup) -> None:
    found = await events(setup, citizen="+82 10-1111-2222")
    kinds = [e["kind"] for e in found]
    assert kinds.count("inbound.webhook") == 1
    assert kinds.count("outbound.sent") == 2
    assert sorted(k for k in kinds if k.startswith("message.")) == [
        "message.report_abuse",
        "message.voting",
    ]
    assert "handoff.protection" in kinds
    assert all(e["subjects"] == [KEYS.pseudonymise(ALICE).hex()] for e in found)
    assert [e["seq"] for e in found] == sorted(e["seq"] for e in found)
    webhook_event = next(e for e in found if e["kind"] == "inbound.webhook")
    assert webhook_event["sealed"]
    assert webhook_event["has_raw_body"]
    text = next(e for e in found if e["kind"] == "message.voting")["payload"]["text"]
    assert text == ALICE_WORDS
    assert await events(setup, citizen="+1 555 000 0000") == []


async def test_kind_intent_time_and_correlation_filters(setup: Setup) -> None:
    assert [e["correlation_id"] for e in await events(setup, kind="outbound.failed")] == [
        "wamid.bob.1"
    ]
    abuse = await events(setup, intent="report_abuse")
    assert {e["kind"] for e in abuse} == {
        "message.report_abuse",
        "outbound.sent",
        "handoff.protection",
    }
    window = await events(
        setup,
        since=(START + timedelta(minutes=119)).isoformat(),
        until=(START + timedelta(minutes=122)).isoformat(),
    )
    assert {e["correlation_id"] for e in window} == {"wamid.bob.1", "wamid.bob.1.reply"}
    statuses = await events(setup, correlation_id="wamid.alice.1.reply")
    assert [e["kind"] for e in statuses] == ["status.delivered", "status.read"]
    both = await events(setup, citizen=BOB, kind="status.read")
    assert [e["correlation_id"] for e in both] == ["wamid.bob.1.reply"]


# --- pagination ------------------------------------------------------------------------------


async def walk(setup: Setup, params: dict[str, str], *, between: Any = None) -> list[int]:
    seqs: list[int] = []
    cursor = None
    pages = 0
    while True:
        query = {**params, **({} if cursor is None else {"cursor": cursor})}
        status, page = await call(setup, "/v1/events", token=setup.auditor, params=query)
        assert status == 200, page
        seqs += [e["seq"] for e in page["events"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return seqs
        if between is not None and pages == 2:
            await between()


async def test_pages_cover_every_event_once_in_order(setup: Setup) -> None:
    seqs = await walk(setup, {"kind": "inbound.rejected", "limit": "7"})
    assert len(seqs) >= FILLER
    assert seqs == sorted(set(seqs))
    # a last page that is exactly full still ends (then an empty page is never served)
    exact = await walk(setup, {"kind": "status.read", "limit": "4"})
    assert len(exact) == 4
    status, page = await call(
        setup, "/v1/events", token=setup.auditor, params={"kind": "status.failed"}
    )
    assert (status, page) == (200, {"events": [], "next_cursor": None})


async def test_events_appended_while_paging_are_seen_once(setup: Setup) -> None:
    before = len(await events(setup, kind="inbound.rejected"))

    async def append_more() -> None:
        await append_batch(setup.api.pool, filler(10, offset=1000), KEYS)

    seqs = await walk(setup, {"kind": "inbound.rejected", "limit": "10"}, between=append_more)
    assert seqs == sorted(set(seqs))
    assert len(seqs) == before + 10


async def test_a_cursor_only_serves_its_own_query(setup: Setup) -> None:
    status, page = await call(
        setup, "/v1/events", token=setup.auditor, params={"kind": "inbound.rejected", "limit": "2"}
    )
    assert status == 200
    status, body = await call(
        setup,
        "/v1/events",
        token=setup.auditor,
        params={"kind": "status.read", "cursor": page["next_cursor"]},
    )
    assert status == 400
    assert "another query" in body["error"]


# --- proofs ----------------------------------------------------------------------------------


async def test_an_event_comes_with_an_inclusion_proof_the_auditor_checks(setup: Setup) -> None:
    [found] = await events(setup, kind="message.report_abuse")
    for ref in (str(found["seq"]), found["event_id"]):
        status, document = await call(setup, f"/v1/events/{ref}", token=setup.auditor)
        assert status == 200
        inclusion = document["inclusion"]
        checkpoint = open_checkpoint(inclusion["checkpoint"], SIGNER.verifier)
        merkle.verify_inclusion(
            document["seq"],
            checkpoint.tree_size,
            bytes.fromhex(document["leaf_hash"]),
            [bytes.fromhex(h) for h in inclusion["proof"]],
            checkpoint.root_hash,
        )
    [raw] = await events(setup, kind="inbound.webhook")
    status, document = await call(setup, f"/v1/events/{raw['seq']}", token=setup.auditor)
    assert ALICE_WORDS in base64.b64decode(document["raw_body"]).decode()


async def test_tree_heads_and_a_consistency_proof_between_them(setup: Setup) -> None:
    await append_batch(setup.api.pool, filler(3, offset=2000), KEYS)
    assert await sign_tree_head(setup.api.pool, SIGNER, forced=True) is not None
    status, page = await call(setup, "/v1/tree-heads", token=setup.auditor)
    assert status == 200
    heads = page["tree_heads"]
    assert len(heads) >= 2
    first, last = heads[0], heads[-1]
    status, proof = await call(
        setup, "/v1/consistency", token=setup.auditor, params={"first": str(first["tree_size"])}
    )
    assert status == 200
    assert proof["second"] == last["tree_size"]
    old = open_checkpoint(proof["first_checkpoint"], SIGNER.verifier)
    new = open_checkpoint(proof["second_checkpoint"], SIGNER.verifier)
    merkle.verify_consistency(
        old.tree_size,
        new.tree_size,
        old.root_hash,
        new.root_hash,
        [bytes.fromhex(h) for h in proof["proof"]],
    )


# --- conversations ---------------------------------------------------------------------------


async def test_a_citizens_conversations(setup: Setup) -> None:
    status, page = await call(
        setup, "/v1/conversations", token=setup.auditor, params={"citizen": "+82-10-1111-2222"}
    )
    assert status == 200, page
    first, second = page["conversations"]
    assert first["message"]["payload"]["text"] == ALICE_WORDS
    assert first["classification"]["intent"] == "voting"
    assert [r["payload"]["wamid"] for r in first["replies"]] == ["wamid.alice.1.reply"]
    assert [s["kind"] for s in first["statuses"]] == ["status.delivered", "status.read"]
    assert second["classification"]["intent"] == "report_abuse"
    assert [h["kind"] for h in second["handoffs"]] == ["handoff.protection"]
    status, page = await call(
        setup,
        "/v1/conversations",
        token=setup.auditor,
        params={"intent": "report_abuse", "since": START.isoformat()},
    )
    [abuse] = page["conversations"]
    assert abuse["message"]["correlation_id"] == "wamid.alice.2"
    assert [r["payload"]["wamid"] for r in abuse["replies"]] == ["wamid.alice.2.reply"]
    status, page = await call(
        setup, "/v1/conversations", token=setup.auditor, params={"message": "wamid.bob.1"}
    )
    [bob] = page["conversations"]
    assert sorted(r["kind"] for r in bob["replies"]) == ["outbound.failed", "outbound.sent"]


# --- access events ---------------------------------------------------------------------------


async def test_every_query_is_logged_without_the_citizens_number(setup: Setup) -> None:
    await events(setup, citizen=ALICE, kind="status.read")
    access = [e for e in await events(setup, kind="audit.access") if e["payload"]["status"] == 200]
    latest = [
        e
        for e in access
        if e["payload"]["query"].get("kind") == "status.read" and "subject" in e["payload"]["query"]
    ][-1]
    assert latest["payload"]["token"] == "court-auditor"
    assert latest["payload"]["role"] == "auditor"
    assert latest["payload"]["rows"] == 2  # her two replies were read
    assert latest["payload"]["query"]["subject"] == KEYS.pseudonymise(ALICE).hex()
    assert not latest["sealed"]
    stored = await setup.api.pool.fetch(
        "SELECT payload::text FROM audit_log WHERE kind = 'audit.access'"
    )
    assert all(ALICE not in row[0] for row in stored)


# --- export ----------------------------------------------------------------------------------


async def export_to(setup: Setup, path: Path, params: dict[str, str]) -> list[dict[str, Any]]:
    status, body = await call(setup, "/v1/export", token=setup.auditor, params=params)
    assert status == 200
    await asyncio.to_thread(path.write_bytes, body)
    return [orjson.loads(line) for line in body.splitlines()]


async def test_an_exported_day_verifies_offline(setup: Setup, tmp_path: Path) -> None:
    await sign_tree_head(setup.api.pool, SIGNER, forced=True)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lines = await export_to(
        setup,
        tmp_path / "day.ndjson",
        {"since": today.isoformat(), "until": (today + timedelta(days=1)).isoformat()},
    )
    header = lines[0]
    assert header["end_seq"] > header["first_seq"]
    body = [line for line in lines if line.get("type") == "event"]
    assert len(body) == header["end_seq"] - header["first_seq"]
    assert any(line.get("plain") and line["plain"].get("text") == ALICE_WORDS for line in body)
    report = verify_export(tmp_path / "day.ndjson", SIGNER.verifier)
    assert report.ok, report.lines()
    assert report.verified_size >= header["end_seq"]

    # a slice from the middle verifies too, and a changed payload in it does not
    lines = await export_to(setup, tmp_path / "slice.ndjson", {"from_seq": "5", "to_seq": "17"})
    assert verify_export(tmp_path / "slice.ndjson", SIGNER.verifier).ok
    tampered = []
    for line in lines:
        if line.get("type") == "event" and line["seq"] == 9:
            line["correlation_id"] += "x"
        tampered.append(orjson.dumps(line))
    (tmp_path / "slice.ndjson").write_bytes(b"\n".join(tampered) + b"\n")
    report = verify_export(tmp_path / "slice.ndjson", SIGNER.verifier)
    assert not report.ok
    assert any("seq 9" in line for line in report.lines())


# --- erasure ---------------------------------------------------------------------------------


async def test_erasure_makes_words_unreadable_and_every_proof_still_verifies(
    setup: Setup, tmp_path: Path
) -> None:
    before = await events(setup, citizen=CAROL)
    assert any(e["payload"] and e["payload"].get("text") == "carol's words" for e in before)

    status, body = await call(
        setup,
        "/v1/erasures",
        token=setup.operator,
        method="POST",
        body={"citizen": "+82 10 5555 6666"},
    )
    assert status == 200, body
    assert body["events"] == len(before)
    status, _again = await call(
        setup, "/v1/erasures", token=setup.operator, method="POST", body={"citizen": CAROL}
    )
    assert status == 404

    after = await events(setup, citizen=CAROL)
    assert [e["seq"] for e in after] == [e["seq"] for e in before]
    assert all(e["erased"] and e["payload"] is None for e in after)
    assert [e["leaf_hash"] for e in after] == [e["leaf_hash"] for e in before]
    [erasure] = [
        e
        for e in await events(setup, kind="audit.erasure")
        if e["payload"]["subject"] == KEYS.pseudonymise(CAROL).hex()
    ]
    assert erasure["payload"]["requested_by"] == "privacy-officer"
    # nothing in the database reads as Carol's words or number any more
    dump = await setup.api.pool.fetch("SELECT t::text FROM audit_log t")
    assert not any("carol's words" in row[0] or CAROL in row[0] for row in dump)

    assert await sign_tree_head(setup.api.pool, SIGNER, forced=True) is not None
    report = await verify_database(setup.database_url, SIGNER.verifier)
    assert report.ok, report.lines()
    status, document = await call(setup, f"/v1/events/{before[0]['seq']}", token=setup.auditor)
    assert document["erased"]
    assert document["inclusion"] is not None
    lines = await export_to(setup, tmp_path / "after.ndjson", {"from_seq": "0"})
    assert verify_export(tmp_path / "after.ndjson", SIGNER.verifier).ok
    assert [line["plain"] for line in lines if line.get("seq") == before[0]["seq"]] == [None]


async def test_erase_command_and_verify_command(setup: Setup, tmp_path: Path) -> None:
    env = {"CIVICLINE_DATABASE_URL": setup.database_url, **KEY_ENV}
    code, output = await run_audit_cli("erase", "--wa-id", BOB, env=env)
    assert code == 0, output
    assert "events now unreadable" in output
    assert all(e["erased"] for e in await events(setup, citizen=BOB))
    code, output = await run_audit_cli("erase", "--wa-id", BOB, env=env)
    assert code == 1
    public = tmp_path / "audit.pub"
    public.write_text(SIGNER.verifier.encode())
    await sign_tree_head(setup.api.pool, SIGNER, forced=True)
    code, output = await run_audit_cli("verify", "--public-key", str(public), env=env)
    assert code == 0, output
    # a citizen who writes again after an erasure gets a new key: their new words are readable
    await append_batch(
        setup.api.pool, [message(BOB, "wamid.bob.2", "voting", "again", minutes=300)], KEYS
    )
    again = [e for e in await events(setup, citizen=BOB) if not e["erased"]]
    assert [e["payload"]["text"] for e in again] == ["again"]


async def test_a_key_cannot_be_brought_back_or_deleted(setup: Setup) -> None:
    async with setup.api.pool.acquire() as connection:
        for statement in [
            "UPDATE audit_subject_key SET wrapped_key = '\\x00'::bytea, erased_at = NULL",
            "DELETE FROM audit_subject_key",
            "TRUNCATE audit_subject_key",
        ]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
