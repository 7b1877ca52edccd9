"""Unit-test helpers: the shared sample webhook bodies next to the repository."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

# ../shared/fixtures/webhooks, beside the repository root (tests/unit -> tests -> repo).
FIXTURES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "webhooks"


def load_webhook(name: str, directory: Path = FIXTURES_DIR) -> Any:
    """One sample body, decoded the way the router decodes what ingress published."""
    return orjson.loads((directory / name).read_bytes())


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES_DIR.is_dir():
        pytest.fail(f"sample webhooks not found at {FIXTURES_DIR}")
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def webhook(fixtures_dir: Path) -> Callable[[str], Any]:
    """`webhook("01_text_ko_voting.json")` -> the decoded body (session-scoped for hypothesis)."""
    return functools.partial(load_webhook, directory=fixtures_dir)
