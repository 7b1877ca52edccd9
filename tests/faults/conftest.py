"""Fixtures of the reliability suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from civicline.simulator.server import Simulator
from support import scenarios
from support.harness import Harness, ProxiedHarness, signing_env
from support.isolation import EnvironmentFactory
from support.pipeline import Pipeline
from support.tcpproxy import TcpProxy, through


@pytest.fixture
async def harness(
    environment_for_test: EnvironmentFactory, tmp_path: Path
) -> AsyncIterator[Harness]:
    environment = await environment_for_test("faults")
    async with Simulator() as simulator:
        env, verifier = signing_env()
        pipeline = Pipeline(environment, simulator.base_url, tmp_path, extra_env=env)
        try:
            await pipeline.start_all()
            yield Harness(environment, simulator, pipeline, tmp_path, verifier)
        finally:
            for service, process in pipeline.processes.items():
                if process.poll() is None:
                    await pipeline.stop(service)


@pytest.fixture
async def proxied_harness(
    environment_for_test: EnvironmentFactory, tmp_path: Path
) -> AsyncIterator[ProxiedHarness]:
    environment = await environment_for_test("netfaults")
    amqp_target, postgres_target = (
        urlsplit(environment.amqp_url),
        urlsplit(environment.database_url),
    )
    amqp = TcpProxy(amqp_target.hostname or "127.0.0.1", amqp_target.port or 5672)
    postgres = TcpProxy(postgres_target.hostname or "127.0.0.1", postgres_target.port or 5432)
    await amqp.start()
    await postgres.start()
    env, verifier = signing_env()
    async with Simulator() as simulator:
        pipeline = Pipeline(
            environment,
            simulator.base_url,
            tmp_path,
            amqp_url=through(environment.amqp_url, amqp.port),
            database_url=through(environment.database_url, postgres.port),
            extra_env=env,
        )
        try:
            await pipeline.start_all()
            yield ProxiedHarness(
                Harness(environment, simulator, pipeline, tmp_path, verifier), amqp, postgres
            )
        finally:
            for service, process in pipeline.processes.items():
                if process.poll() is None:
                    await pipeline.stop(service)
            await amqp.stop()
            await postgres.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Each scenario's count line travels in its test's report (tests/conftest.py prints
    them all at the end), so that it reaches the terminal from a pytest-xdist worker too."""
    report = yield
    report.user_properties.extend((scenarios.PROPERTY, line) for line in scenarios.LINES)
    scenarios.LINES.clear()
    return report
