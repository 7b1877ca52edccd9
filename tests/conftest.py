"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support import scenarios
from support.isolation import (
    RUN_PID_VARIABLE,
    Environment,
    EnvironmentFactory,
    create_environment,
    drop_environment,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "webhooks"


def pytest_configure(config: pytest.Config) -> None:
    # In the process that starts the run (before pytest-xdist starts its workers); a worker
    # inherits the variable, and keeps it (support/isolation.py).
    os.environ.setdefault(RUN_PID_VARIABLE, str(os.getpid()))


@pytest.fixture(scope="session")
def webhook_fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"the shared webhook fixtures are missing: expected {FIXTURES}")
    return FIXTURES


async def _environment_factory() -> AsyncIterator[EnvironmentFactory]:
    """Makes isolated vhost + database pairs on demand; drops them all when it ends."""
    made: list[Environment] = []

    async def make(label: str) -> Environment:
        environment = await create_environment(label)
        made.append(environment)
        return environment

    yield make
    for environment in made:
        await drop_environment(environment)


@pytest.fixture(scope="module")
async def environments() -> AsyncIterator[EnvironmentFactory]:
    """Environments that live until the end of their module (for module-scoped pipelines),
    so a run holds only a few vhosts at a time."""
    async for factory in _environment_factory():
        yield factory


@pytest.fixture
async def environment_for_test() -> AsyncIterator[EnvironmentFactory]:
    """Environments dropped as soon as their test ends: a test that makes its own broker
    vhost (quorum queues are Raft groups, not free) should not leave it running for the rest
    of the session."""
    async for factory in _environment_factory():
        yield factory


# The reliability suite's count lines, from the reports of the tests that made them
# (support/scenarios.py).
_SCENARIOS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _SCENARIOS.extend(
        str(value) for name, value in report.user_properties if name == scenarios.PROPERTY
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per scenario, end to end: `scenario: sent N, accepted N, audited N, ...`."""
    if _SCENARIOS:
        terminalreporter.section("reliability scenarios")
        for line in _SCENARIOS:
            terminalreporter.write_line(line)
