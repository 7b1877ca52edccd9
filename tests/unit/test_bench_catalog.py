"""The surge drill pins the responder's office hours (bench/surge.py `--office`), so its load
does not depend on the hour in Seoul when it runs: closed, every new conversation also gets the
away notice; open, none does."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from civicline.responder.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def surge() -> ModuleType:
    spec = importlib.util.spec_from_file_location("surge_drill", ROOT / "bench" / "surge.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def drill_catalog_file(surge: ModuleType, office: str, tmp_path: Path) -> Path:
    path = tmp_path / f"catalog-{office}.toml"
    path.write_text(surge.drill_catalog(surge.CATALOG.read_text(encoding="utf-8"), office))
    return path


def test_office_closed_is_closed_at_every_hour_of_the_week(
    surge: ModuleType, tmp_path: Path
) -> None:
    catalog = load_catalog(drill_catalog_file(surge, "closed", tmp_path))
    assert catalog.office is not None
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    hours = [monday + timedelta(hours=h) for h in range(7 * 24)]
    assert not any(catalog.office.is_open(moment) for moment in hours)
    assert set(catalog.office.away) == {"en", "ko", "ja"}  # the notice is still there to send


def test_office_open_sends_no_away_notice_and_keeps_every_reply(
    surge: ModuleType, tmp_path: Path
) -> None:
    catalog = load_catalog(drill_catalog_file(surge, "open", tmp_path))
    shipped = load_catalog(surge.CATALOG)
    assert catalog.office is None
    assert catalog.replies == shipped.replies
    assert catalog.templates == shipped.templates
