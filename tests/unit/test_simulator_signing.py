"""The simulator signs webhooks exactly as Meta does (reference §2)."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from civicline.simulator.signing import SIGNATURE_HEADER, sign


def independent_signature(body: bytes, secret: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_rfc_4231_test_case_2() -> None:
    # RFC 4231 §4.3: HMAC-SHA-256 with key "Jefe".
    assert sign(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_matches_an_independent_hmac_of_a_webhook_body() -> None:
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    assert sign(body, "app-secret") == independent_signature(body, b"app-secret")


def test_header_value_is_71_characters_of_lowercase_hex() -> None:
    value = sign(b"{}", "app-secret")
    assert len(value) == 71
    prefix, digest = value.split("=", 1)
    assert prefix == "sha256"
    assert digest == digest.lower()
    int(digest, 16)


def test_signature_covers_the_exact_bytes_not_the_decoded_json() -> None:
    escaped = b'{"text":"\\ud22c\\ud45c\\uc18c"}'
    raw_utf8 = '{"text":"투표소"}'.encode()
    assert sign(escaped, "s") != sign(raw_utf8, "s")


def test_non_ascii_secret_is_used_as_utf8() -> None:
    assert sign(b"x", "비밀") == independent_signature(b"x", "비밀".encode())


def test_header_name_is_metas() -> None:
    assert SIGNATURE_HEADER.lower() == "x-hub-signature-256"


@given(body=st.binary(), secret=st.text(min_size=1))
def test_any_body_and_secret(body: bytes, secret: str) -> None:
    assert sign(body, secret) == independent_signature(body, secret.encode())
