"""The surge drill's pure parts. It pins the responder's office hours (bench/surge.py
`--office`), so its load does not depend on the hour in Seoul when it runs: closed, every new
conversation also gets the away notice; open, none does. And its report names the stage that
held back the first failed step, with where that stage's CPU went when it was profiled."""

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


def step(offered: float, sustained: bool, depths: dict[str, int]) -> dict[str, object]:
    return {
        "offered_per_s": offered,
        "sustained": sustained,
        "queue_depths": depths,
        "ingress_p99_ms": 900.0,
        "cpu_cores": {"ingress": 0.2, "router": 0.3, "responder": 0.25, "audit": 0.3},
    }


def test_the_report_names_the_stage_that_held_back_and_shows_its_profile(
    surge: ModuleType, tmp_path: Path
) -> None:
    steps = [
        step(100, True, {}),
        step(250, False, {"router.inbound": 40, "responder.messages": 900, "audit.events": 10}),
        step(500, False, {"router.inbound": 4000}),
    ]
    assert surge.bottleneck_stage(steps) == ("responder", steps[1])
    text = surge.bottleneck(steps, cores=2)
    assert text.startswith("bottleneck at 250 citizen msgs/s: responder (900 messages waiting")
    # py-spy's raw format: the stack, outermost frame first, then the sample count.
    (tmp_path / "responder.txt").write_text(
        "main (responder/__main__.py:8);answer (civicline/responder/handlers.py:110);"
        "claim (civicline/responder/adapters.py:205) 30\n"
        "main (responder/__main__.py:8);publish (aio_pika/exchange.py:99) 10\n"
    )
    profile = surge.bottleneck_profile(steps, tmp_path)
    assert profile is not None
    assert "40 samples" in profile
    assert "75.0%  claim (responder/adapters.py)" in profile
    assert surge.bottleneck_profile(steps, tmp_path / "none") is None  # run without --profile
    # With no queue grown, the step was held back at the door.
    assert surge.bottleneck_stage([step(250, False, {})])[0] == "ingress"
    assert surge.bottleneck_stage(steps[:1]) is None
