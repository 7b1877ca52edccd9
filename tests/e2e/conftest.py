"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from support.pipeline import start_simulator


@pytest.fixture(scope="module")
async def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The Meta simulator as a process of its own, for a module: its clock, which measures
    send rates, is then not read by an event loop busy with the test."""
    process, url = await start_simulator(tmp_path_factory.mktemp("simulator"))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
