"""Language detection: script first, then the citizen's stored preference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from civicline.router.core import SUPPORTED_LANGUAGES, detect_language, has_letters


@pytest.mark.parametrize(
    ("text", "stored", "expected"),
    [
        # Hangul means Korean, whatever was stored
        ("투표소 위치 알려주세요", None, "ko"),
        ("투표소 위치 알려주세요", "ja", "ko"),
        ("투표소 위치 알려주세요", "en", "ko"),
        ("ㅋㅋㅋ", None, "ko"),  # compatibility jamo
        ("passport를 잃어버렸어요", "en", "ko"),
        # mixed Korean and Japanese: the larger count wins (Han goes with the kana), and
        # on a tie the script written first
        ("避難所 대피소 どこ", None, "ja"),
        ("대피소 어디예요 どこ", None, "ko"),
        ("대피 どこ", "en", "ko"),
        ("どこ 대피", "en", "ja"),
        ("大韓民國 만세", None, "ko"),  # hanja with Hangul count for Korean
        # kana means Japanese
        ("避難所はどこですか", None, "ja"),
        ("避難所はどこですか", "ko", "ja"),
        ("ワクチン", "en", "ja"),
        ("ﾜｸﾁﾝ", None, "ja"),  # halfwidth katakana
        ("STOPします", "en", "ja"),
        # mixed with Latin: a Korean or Japanese sentence with an English word stays Korean or
        # Japanese; an English sentence quoting a Korean or Japanese name stays English
        ("ID카드 재발급", "en", "ko"),
        ("Where is 투표소?", None, "ko"),
        ("Where is the nearest polling station, 투표소?", None, "en"),
        ("Where is the nearest polling station, 투표소?", "ja", "ja"),
        ("Is the shelter at 新宿区役所 open tonight?", None, "en"),
        ("新宿区役所のshelter", "en", "ja"),
        # Han alone: keep a stored ja/ko, otherwise Japanese
        ("投票所", None, "ja"),
        ("投票所", "en", "ja"),
        ("投票所", "ja", "ja"),
        ("投票所", "ko", "ko"),
        ("避難所？ 2026", "ko", "ko"),
        ("人々", None, "ja"),
        # Latin and everything else: the stored language, else English
        ("How do I renew my passport?", None, "en"),
        ("How do I renew my passport?", "ko", "ko"),
        ("STOP", "ja", "ja"),
        ("Comprobante de domicilio", "es", "es"),
        ("Comprobante de domicilio", None, "en"),
        ("I live near 新宿", None, "en"),
        ("新宿 station", None, "en"),
        ("I live near 新宿", "ko", "ko"),
        # emoji, digits and punctuation only: the stored language, else English
        ("👍", "ja", "ja"),
        ("👍", None, "en"),
        ("🙏🙏", "ko", "ko"),
        ("🆘", None, "en"),
        ("❤️", "ja", "ja"),  # with a variation selector
        ("👨‍👩‍👧", "ko", "ko"),  # a ZWJ sequence
        ("🇰🇷", None, "en"),  # a flag (regional indicators are symbols, not letters)
        ("!!! ???", "ko", "ko"),
        ("12345", None, "en"),
        ("", "ko", "ko"),
        ("", None, "en"),
        (None, None, "en"),
        (None, "ja", "ja"),
        ("hello", "", "en"),
    ],
)
def test_detect_language(text: str | None, stored: str | None, expected: str) -> None:
    assert detect_language(text, stored) == expected


@given(
    text=st.none() | st.text(alphabet=st.characters(exclude_categories=())),
    stored=st.none() | st.sampled_from(["ko", "ja", "en", "es", "zh"]),
)
def test_detect_language_returns_a_supported_or_the_stored_code(
    text: str | None, stored: str | None
) -> None:
    assert detect_language(text, stored) in {*SUPPORTED_LANGUAGES, stored}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", True),
        ("투표", True),
        ("避難所", True),
        ("👍", False),
        ("🇰🇷 ❤️", False),
        ("123 !?", False),
        ("", False),
        (None, False),
    ],
)
def test_has_letters(text: str | None, expected: bool) -> None:
    assert has_letters(text) is expected
