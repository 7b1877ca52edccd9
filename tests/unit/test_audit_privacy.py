"""Citizens' privacy in the audit log, pure parts: pseudonyms, who an event is about, sealing
and crypto-shredding, and leaf encoding v2 (which hashes the ciphertext)."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from civicline.audit import merkle, privacy
from civicline.audit.canonical import LogEntry, canonical_bytes, entry_leaf_hash
from civicline.audit.core import AuditRecord, Sealing, entries_for
from civicline.audit.views import conversation, event_document, opened

KEYS = privacy.PrivacyKeys.from_secrets("p" * 40, "m" * 40)
AT = datetime(2026, 7, 18, 9, 30, tzinfo=UTC)
CITIZEN = "821012345678"
TEXT = "투표소가 어디예요? 제 주소는 서울시 종로구 1"


def message(wamid: str = "wamid.A", citizen: str = CITIZEN) -> AuditRecord:
    return AuditRecord(
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, wamid),
        kind="message.voting",
        occurred_at=AT,
        correlation_id=wamid,
        schema_version=1,
        payload={"wamid": wamid, "from": citizen, "text": TEXT, "intent": "voting"},
    )


def webhook(*citizens: str) -> AuditRecord:
    body = orjson.dumps(
        {
            "entry": [
                {
                    "changes": [
                        {
                            "value": {
                                "contacts": [{"wa_id": c} for c in citizens],
                                "messages": [{"from": c, "text": {"body": TEXT}} for c in citizens],
                            }
                        }
                    ]
                }
            ]
        }
    )
    return AuditRecord(
        event_id=uuid.uuid4(),
        kind="inbound.webhook",
        occurred_at=AT,
        correlation_id="raw",
        schema_version=1,
        payload={"bytes": len(body)},
        raw_body=body,
        signature="sha256=00",
    )


def sealing_for(*records: AuditRecord) -> tuple[Sealing, dict[bytes, bytes]]:
    subjects = {r.event_id: KEYS.subjects(r.citizens()) for r in records}
    every = sorted({s for found in subjects.values() for s in found})
    data = {s: bytes([n + 1]) * 32 for n, s in enumerate(every)}
    keys = {s: (uuid.UUID(int=n + 1), data[s]) for n, s in enumerate(every)}
    return Sealing(subjects, keys), data


def stored_row(entry: Any, raw_body: bytes | None) -> dict[str, Any]:
    e = entry.entry
    return {
        "seq": e.seq,
        "event_id": e.event_id,
        "kind": e.kind,
        "intent": e.intent,
        "occurred_at": e.occurred_at,
        "recorded_at": e.recorded_at,
        "correlation_id": e.correlation_id,
        "schema_version": e.schema_version,
        "leaf_version": e.version,
        "leaf_hash": entry.leaf_hash,
        "subjects": list(e.subjects),
        "key_ids": list(e.key_ids),
        "sealed_payload": e.sealed_payload,
        "payload": e.payload_json,
        "raw_body": raw_body,
        "signature": e.signature,
    }


def test_a_phone_number_is_one_citizen_however_it_is_written() -> None:
    variants = ["821012345678", "+82 10-1234-5678", "+82 (10) 1234 5678", " 821012345678 "]
    assert len({KEYS.pseudonymise(v) for v in variants}) == 1
    assert KEYS.pseudonymise("821012345679") != KEYS.pseudonymise(CITIZEN)
    # a business-scoped user id is kept as it is
    assert privacy.normalise_citizen("KR.1234567890abc") == "KR.1234567890abc"


def test_pseudonyms_depend_on_the_key() -> None:
    other = privacy.PrivacyKeys.from_secrets("q" * 40, "m" * 40)
    assert other.pseudonymise(CITIZEN) != KEYS.pseudonymise(CITIZEN)
    assert len(KEYS.pseudonymise(CITIZEN)) == 32
    assert CITIZEN.encode() not in KEYS.pseudonymise(CITIZEN)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        privacy.PrivacyKeys.from_secrets("short", "m" * 40)


def test_who_an_event_is_about() -> None:
    assert message().citizens() == [CITIZEN]
    status = dataclasses.replace(message(), payload={"recipient_id": CITIZEN, "status": "read"})
    assert status.citizens() == [CITIZEN]
    reply = dataclasses.replace(message(), payload={"to": CITIZEN, "in_reply_to": "wamid.A"})
    assert reply.citizens() == [CITIZEN]
    assert sorted(webhook(CITIZEN, "15550001111").citizens()) == ["15550001111", CITIZEN]
    # A campaign's send job names every recipient of its chunk.
    job = dataclasses.replace(
        message(),
        payload={
            "campaign_id": "c",
            "recipients": [[CITIZEN, "ko"], ["15550001111", "en_US"], [CITIZEN, "ko"]],
        },
    )
    assert job.citizens() == [CITIZEN, "15550001111"]
    checkpoint = dataclasses.replace(message(), payload={"tree_size": 4, "origin": "x"})
    assert checkpoint.citizens() == []
    quoting = orjson.dumps(
        {"messages": [{"from": CITIZEN, "context": {"from": "15550009999", "id": "wamid.X"}}]}
    )
    assert dataclasses.replace(webhook(), raw_body=quoting).citizens() == [CITIZEN]
    junk = dataclasses.replace(webhook(), raw_body=b"\x00not json")
    assert junk.citizens() == []


def test_a_sealed_event_hides_the_citizen_and_their_words() -> None:
    record = webhook(CITIZEN)
    sealing, _ = sealing_for(record)
    [entry] = entries_for([(0, record)], AT, sealing)
    stored = (
        canonical_bytes(entry.entry) + (entry.entry.sealed_payload or b"") + (entry.raw_body or b"")
    )
    assert CITIZEN.encode() not in stored
    assert TEXT.encode() not in stored
    assert entry.entry.payload_json is None
    assert entry.entry.version == 2
    assert entry.entry.subjects == (KEYS.pseudonymise(CITIZEN),)


def test_a_campaign_job_is_sealed_for_every_recipient_it_names() -> None:
    recipients = [[f"8210555500{n:02d}", "ko"] for n in range(100)]
    job = AuditRecord(
        event_id=uuid.uuid4(),
        kind="broadcast.job",
        occurred_at=AT,
        correlation_id="campaign:c",
        schema_version=1,
        payload={"campaign_id": "c", "recipients": recipients},
    )
    sealing, _ = sealing_for(job)
    [entry] = entries_for([(0, job)], AT, sealing)
    stored = canonical_bytes(entry.entry) + (entry.entry.sealed_payload or b"")
    assert not any(wa_id.encode() in stored for wa_id, _ in recipients)
    assert entry.entry.payload_json is None
    assert len(entry.entry.subjects) == 100  # erasing any one of them erases the job event


def test_a_sealed_event_opens_with_its_keys_and_not_once_one_is_erased() -> None:
    record = webhook(CITIZEN, "15550001111")
    sealing, data = sealing_for(record)
    [entry] = entries_for([(5, record)], AT, sealing)
    row = stored_row(entry, entry.raw_body)
    keys = {sealing.keys[s][0]: data[s] for s in entry.entry.subjects}
    payload, raw, erased = opened(row, keys)
    assert (payload, raw, erased) == (dict(record.payload), record.raw_body, False)
    # destroying either citizen's key erases the webhook they share
    for erased_subject in entry.entry.subjects:
        without = {**keys, sealing.keys[erased_subject][0]: None}
        assert opened(row, without) == (None, None, True)
    document = event_document(row, {sealing.keys[entry.entry.subjects[0]][0]: None})
    assert document["erased"] is True
    assert document["payload"] is None


def test_sealed_bytes_cannot_be_moved_to_another_event() -> None:
    first, second = message("wamid.A"), message("wamid.B")
    sealing, data = sealing_for(first, second)
    a, b = entries_for([(0, first), (1, second)], AT, sealing)
    key = privacy.event_key([data[s] for s in a.entry.subjects])
    assert a.entry.sealed_payload is not None
    with pytest.raises(privacy.PrivacyError):
        privacy.open_sealed(key, b.entry.event_id, privacy.PAYLOAD_FIELD, a.entry.sealed_payload)


@pytest.mark.parametrize("count", [1, 2, 5])
def test_an_event_key_is_hkdf_sha256_of_its_citizens_keys(count: int) -> None:
    # event_key writes HKDF out as two HMACs; it must stay the KDF docs/audit-log.md names, or
    # events sealed before would no longer open.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    data_keys = [bytes([n + 7]) * 32 for n in range(count)]
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"civicline audit event v2"
    ).derive(b"".join(data_keys))
    assert privacy.event_key(data_keys) == expected


def test_a_batch_never_seals_two_fields_with_one_nonce() -> None:
    # Events about one citizen share one cipher within a batch; AES-GCM is only safe while no
    # nonce repeats under a key, so every sealed field of the batch has its own.
    records = [webhook(CITIZEN), message("wamid.A"), message("wamid.B"), webhook(CITIZEN)]
    sealing, data = sealing_for(*records)
    entries = entries_for(list(enumerate(records)), AT, sealing)
    sealed = [e.entry.sealed_payload for e in entries] + [e.raw_body for e in entries[::3]]
    nonces = [field[: privacy.NONCE_SIZE] for field in sealed if field is not None]
    assert len(nonces) == 6
    assert len(set(nonces)) == 6
    for entry in entries:
        row = stored_row(entry, entry.raw_body)
        keys = {sealing.keys[s][0]: data[s] for s in entry.entry.subjects}
        payload, raw, _ = opened(row, keys)
        assert (payload, raw) == (dict(entry.record.payload), entry.record.raw_body)


def test_each_event_of_a_batch_opens_with_its_own_citizens_keys_only() -> None:
    # Events about different citizens in one batch never share a cipher: each opens with the
    # keys of the citizens it is about, and not with another event's.
    other = "15550001111"
    records = [webhook(CITIZEN, other), message("wamid.A"), message("wamid.B", other)]
    sealing, data = sealing_for(*records)
    entries = entries_for(list(enumerate(records)), AT, sealing)
    assert len({e.entry.key_ids for e in entries}) == 3
    event_keys = [privacy.event_key([data[s] for s in e.entry.subjects]) for e in entries]
    for entry, own in zip(entries, event_keys, strict=True):
        sealed = entry.entry.sealed_payload
        assert sealed is not None
        opened_payload = privacy.open_sealed(
            own, entry.entry.event_id, privacy.PAYLOAD_FIELD, sealed
        )
        assert orjson.loads(opened_payload) == dict(entry.record.payload)
        for stranger in event_keys:
            if stranger != own:
                with pytest.raises(privacy.PrivacyError):
                    privacy.open_sealed(
                        stranger, entry.entry.event_id, privacy.PAYLOAD_FIELD, sealed
                    )


def test_a_random_source_that_falls_short_is_refused() -> None:
    record = message("wamid.A")
    sealing, _ = sealing_for(record)
    short = dataclasses.replace(sealing, random=lambda size: bytes(size - 1))
    with pytest.raises(ValueError, match="random source"):
        entries_for([(0, record)], AT, short)


def test_wrapped_keys_open_only_with_the_master_key() -> None:
    key_id, data_key = uuid.uuid4(), b"k" * 32
    wrapped = privacy.wrap_key(KEYS.master, key_id, data_key)
    assert data_key not in wrapped
    assert privacy.unwrap_key(KEYS.master, key_id, wrapped) == data_key
    with pytest.raises(privacy.PrivacyError):
        privacy.unwrap_key(b"x" * 32, key_id, wrapped)
    with pytest.raises(privacy.PrivacyError):
        privacy.unwrap_key(KEYS.master, uuid.uuid4(), wrapped)


V2 = LogEntry(
    seq=7,
    event_id=uuid.UUID(int=7),
    kind="message.voting",
    occurred_at=AT,
    recorded_at=AT,
    correlation_id="wamid.A",
    schema_version=1,
    payload_json=None,
    raw_body_sha256=hashlib.sha256(b"sealed raw").digest(),
    signature=None,
    version=2,
    intent="voting",
    subjects=(b"\x01" * 32,),
    key_ids=(uuid.UUID(int=9),),
    sealed_payload=b"\x02" * 40,
)


def test_the_v2_encoding_is_pinned() -> None:
    expected = (
        "02"
        + "0000000000000007"
        + uuid.UUID(int=7).hex
        + "0000000e"
        + b"message.voting".hex()
        + (1784367000000000).to_bytes(8, "big").hex() * 2
        + "00000007"
        + b"wamid.A".hex()
        + "00000001"
        + "01"
        + "00000006"
        + b"voting".hex()
        + "00000001"
        + "01" * 32
        + "00000001"
        + uuid.UUID(int=9).hex
        + "01"
        + hashlib.sha256(b"\x02" * 40).hexdigest()
        + "01"
        + hashlib.sha256(b"sealed raw").hexdigest()
        + "00"
    )
    assert canonical_bytes(V2).hex() == expected


@pytest.mark.parametrize(
    "change",
    [
        {"intent": "shelter"},
        {"intent": None},
        {"subjects": (b"\x03" * 32,)},
        {"subjects": ()},
        {"key_ids": (uuid.UUID(int=10),)},
        {"sealed_payload": b"\x02" * 39 + b"\x03"},
        {"version": 1, "payload_json": "{}", "sealed_payload": None},
    ],
)
def test_every_v2_field_is_covered_by_the_leaf(change: dict[str, Any]) -> None:
    assert entry_leaf_hash(dataclasses.replace(V2, **change)) != entry_leaf_hash(V2)


def test_an_entry_with_both_or_neither_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="either"):
        canonical_bytes(dataclasses.replace(V2, payload_json="{}"))
    with pytest.raises(ValueError, match="either"):
        canonical_bytes(dataclasses.replace(V2, sealed_payload=None))


def test_a_range_of_leaves_rebuilds_the_root_with_its_proof() -> None:
    leaves = [hashlib.sha256(bytes([n])).digest() for n in range(37)]
    perfect = merkle.perfect_from_leaves(leaves)
    for first, end in [(0, 37), (0, 0), (5, 6), (8, 16), (13, 30), (36, 37), (37, 37)]:
        left = [perfect(*piece) for piece in merkle.perfect_ranges(0, first)]
        right = [perfect(*piece) for piece in merkle.perfect_ranges(end, 37)]
        assert merkle.root_from_range(first, leaves[first:end], left, right, 37) == merkle.root(
            leaves
        )
        if end > first:
            changed = [*leaves[first:end]]
            changed[0] = bytes(32)
            assert merkle.root_from_range(first, changed, left, right, 37) != merkle.root(leaves)
    with pytest.raises(merkle.ProofError):
        merkle.root_from_range(5, leaves[5:6], [], [], 37)


def test_a_conversation_gathers_replies_and_their_statuses() -> None:
    inbound: dict[str, Any] = {
        "kind": "message.voting",
        "correlation_id": "wamid.in",
        "intent": "voting",
        "payload": {"language": "ko", "urgent": False, "handoff": None},
    }
    reply = {
        "kind": "outbound.sent",
        "correlation_id": "wamid.in",
        "payload": {"wamid": "wamid.out"},
    }
    away = {"kind": "outbound.sent", "correlation_id": "away:wamid.in", "payload": {"wamid": "w2"}}
    delivered = {"kind": "status.delivered", "correlation_id": "wamid.out", "payload": {}}
    stray = {"kind": "status.read", "correlation_id": "wamid.other", "payload": {}}
    handoff = {"kind": "handoff.protection", "correlation_id": "wamid.in", "payload": {}}
    view = conversation(inbound, [reply, away, delivered, stray, handoff])
    assert view["replies"] == [reply, away]
    assert view["statuses"] == [delivered]
    assert view["handoffs"] == [handoff]
    assert view["classification"] == {
        "intent": "voting",
        "language": "ko",
        "urgent": False,
        "handoff": None,
    }
