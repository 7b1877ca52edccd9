"""The ports test servers listen on (tests/support/pipeline.py): taken below the kernel's
ephemeral range, where no outgoing connection can hold them, never the same twice in a row, and
a server is only taken as started when its own process holds the port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from support.pipeline import (
    LOWEST_PORT,
    Pipeline,
    _ephemeral_low,
    _worker_ports,
    free_port,
    listens_on,
)


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(LOWEST_PORT <= port < _ephemeral_low() for port in ports)
    for port in ports[:5]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_a_port_bound_now_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process (a second run of the suite, a server on the machine) holds the next
    # port of this worker's slice: the one after it is handed out instead.
    held, spare = free_port(), free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", held))
        server.listen()
        monkeypatch.setattr("support.pipeline._next_ports", iter([held, spare]))
        assert free_port() == spare


def test_a_process_listening_on_a_port_is_told_from_one_that_is_not() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert listens_on(os.getpid(), port)
            # What the pipeline guards against: the port answers, but not from the process
            # that was started to listen there.
            assert not listens_on(other.pid, port)
        finally:
            other.kill()
            other.wait()
    assert not listens_on(os.getpid(), port)


def test_a_process_that_is_gone_listens_on_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not listens_on(gone.pid, free_port())


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_each_worker_of_a_run_has_ports_of_its_own(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    slices = []
    for worker in range(workers):
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        slices.append(set(_worker_ports()))
    assert all(len(ports) >= 100 for ports in slices)
    assert sum(len(ports) for ports in slices) == len(set().union(*slices))


async def test_a_service_is_not_ready_when_another_process_answers_on_its_port(
    tmp_path: Path,
) -> None:
    # As when two workers were handed one port: the service started there failed to bind, and
    # the process that holds the port answers its readiness probe.
    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    pipeline = Pipeline(environment=None, graph_api_base_url="", log_dir=tmp_path)  # type: ignore[arg-type]
    pipeline.ports["audit"] = port
    pipeline.processes["audit"] = subprocess.Popen(  # noqa: ASYNC220 - starts at once
        [sys.executable, "-c", "import time; time.sleep(30)"]
    )
    try:
        with pytest.raises(AssertionError, match="another process answers on audit's port"):
            await pipeline.wait_ready("audit", timeout=10)
    finally:
        pipeline.processes["audit"].kill()
        pipeline.processes["audit"].wait()
        await runner.cleanup()
