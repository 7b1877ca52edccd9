"""ingress's core: Meta's webhook signature (reference §2) and the verification handshake."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from civicline.ingress.core import handshake_challenge, verify_signature

SECRET = "app-secret"
BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def signature(body: bytes, secret: str = SECRET) -> str:
    """Computed independently of the code under test."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_accepts_the_signature_made_with_the_secret() -> None:
    assert verify_signature([SECRET], BODY, signature(BODY))


def test_refuses_a_body_with_one_byte_changed() -> None:
    tampered = bytearray(BODY)
    tampered[10] ^= 0x01
    assert not verify_signature([SECRET], bytes(tampered), signature(BODY))


def test_refuses_a_signature_made_with_another_secret() -> None:
    assert not verify_signature([SECRET], BODY, signature(BODY, "another-secret"))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("sha256=", id="prefix-only"),
        pytest.param("sha1=" + hashlib.sha1(BODY).hexdigest(), id="sha1"),  # noqa: S324
        pytest.param(signature(BODY)[:-1], id="one-hex-digit-short"),
        pytest.param(signature(BODY) + "0", id="one-hex-digit-long"),
        pytest.param("sha256=" + "g" * 64, id="non-hex"),
        pytest.param(signature(BODY).removeprefix("sha256="), id="no-prefix"),
        pytest.param("sha256=é" + "0" * 63, id="non-ascii"),
        pytest.param("sha256=" + "٣" * 64, id="non-ascii-digits"),
        pytest.param(signature(BODY) + "\x00", id="trailing-nul"),
    ],
)
def test_refuses_malformed_headers_without_raising(header: str | None) -> None:
    assert verify_signature([SECRET], BODY, header) is False


def test_accepts_upper_case_hex_of_the_right_digest() -> None:
    # The header is lower-cased before comparison: hex case carries no meaning.
    upper = "sha256=" + signature(BODY).removeprefix("sha256=").upper()
    assert verify_signature([SECRET], BODY, upper)


def test_accepts_surrounding_whitespace() -> None:
    assert verify_signature([SECRET], BODY, f"  {signature(BODY)} ")


def test_either_secret_is_accepted_during_rotation() -> None:
    secrets = ("old-secret", "new-secret")
    assert verify_signature(secrets, BODY, signature(BODY, "old-secret"))
    assert verify_signature(secrets, BODY, signature(BODY, "new-secret"))
    assert not verify_signature(secrets, BODY, signature(BODY, "third-secret"))


def test_no_configured_secret_refuses_everything() -> None:
    assert not verify_signature([], BODY, signature(BODY))
    assert not verify_signature([], b"", signature(b"", ""))


def test_signature_covers_the_escaped_bytes_meta_sends() -> None:
    # Meta escapes non-ASCII as \uXXXX on the wire; "투표" here is 12 ASCII bytes of escapes.
    escaped = b'{"text":"\\ud22c\\ud45c"}'
    reserialised = '{"text":"투표"}'.encode()
    assert escaped != reserialised
    header = signature(escaped)
    assert verify_signature([SECRET], escaped, header)
    # The same JSON value re-serialised as UTF-8 is different bytes: never sign a
    # re-serialisation.
    assert not verify_signature([SECRET], reserialised, header)


def test_non_ascii_secret_is_used_as_utf8() -> None:
    assert verify_signature(["비밀"], BODY, signature(BODY, "비밀"))


def test_empty_body_is_checked_like_any_other() -> None:
    assert verify_signature([SECRET], b"", signature(b""))
    assert not verify_signature([SECRET], b"", signature(b" "))


GOOD_QUERY = {"hub.mode": "subscribe", "hub.verify_token": "vt", "hub.challenge": "1158201444"}


def test_handshake_echoes_the_challenge() -> None:
    assert handshake_challenge(GOOD_QUERY, "vt") == "1158201444"


@pytest.mark.parametrize(
    ("query", "verify_token"),
    [
        pytest.param({**GOOD_QUERY, "hub.verify_token": "wrong"}, "vt", id="wrong-token"),
        pytest.param({**GOOD_QUERY, "hub.verify_token": ""}, "vt", id="empty-token"),
        pytest.param(
            {k: v for k, v in GOOD_QUERY.items() if k != "hub.verify_token"}, "vt", id="no-token"
        ),
        pytest.param({**GOOD_QUERY, "hub.mode": "unsubscribe"}, "vt", id="wrong-mode"),
        pytest.param({k: v for k, v in GOOD_QUERY.items() if k != "hub.mode"}, "vt", id="no-mode"),
        pytest.param(
            {k: v for k, v in GOOD_QUERY.items() if k != "hub.challenge"}, "vt", id="no-challenge"
        ),
        pytest.param({**GOOD_QUERY, "hub.challenge": ""}, "vt", id="empty-challenge"),
        # An unconfigured token must never match, not even an empty presented token.
        pytest.param({**GOOD_QUERY, "hub.verify_token": ""}, "", id="unconfigured-empty"),
        pytest.param(GOOD_QUERY, "", id="unconfigured"),
        pytest.param({**GOOD_QUERY, "hub.verify_token": "vé"}, "vt", id="non-ascii-token"),
    ],
)
def test_handshake_refusals(query: dict[str, str], verify_token: str) -> None:
    assert handshake_challenge(query, verify_token) is None
