"""The four services run as real processes against an isolated environment, the way `make run`
and Kubernetes run them, so tests see real start-up, signals and exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from support.isolation import Environment

SERVICES = ("ingress", "router", "responder", "audit")
APP_SECRET = "e2e-app-secret"
VERIFY_TOKEN = "e2e-verify-token"
ACCESS_TOKEN = "e2e-access-token"


# The lowest port a test server takes. The kernel's ephemeral range (32768-60999 on Linux) is
# where every outgoing connection takes its local port and where binding port 0 draws from, so
# a port found free there may be some client's a moment later, or be handed to another worker
# that asked for port 0 too. Test servers take theirs below it, each pytest-xdist worker from
# its own slice, so two workers of one run never pick the same port. They start above the ports
# of RabbitMQ and Postgres (5432, 5672, 15672, 25672): the tests that stop those servers must
# find their ports free when they start them again.
LOWEST_PORT = 26_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _worker_ports() -> list[int]:
    """This worker's slice of the ports below the ephemeral range, starting at a random place
    in it (another run of the suite on the machine starts elsewhere)."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (_ephemeral_low() - LOWEST_PORT) // count
    if size < 100:  # an unusual ip_local_port_range: let the kernel choose
        return []
    first = LOWEST_PORT + worker * size
    start = random.randrange(size)
    return [first + (start + i) % size for i in range(size)]


_next_ports = itertools.cycle(_worker_ports() or [0])


def free_port() -> int:
    """A port no socket is bound to now, for a test server to listen on."""
    for port in itertools.islice(_next_ports, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free port for a test server among 1000 tried")


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port` (Linux's /proc; where there
    is none, taken as true). A server that answers on a port is not always the one started
    there: if that one failed to bind, another process may own the port."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not all(table.exists() for table in tables):
        return True
    listening = set()
    for table in tables:
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{inode}]")
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process is gone
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) in listening:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


@dataclass
class Pipeline:
    environment: Environment
    graph_api_base_url: str
    log_dir: Path
    ports: dict[str, int] = field(default_factory=lambda: {s: free_port() for s in SERVICES})
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Where the services reach RabbitMQ and Postgres, when not directly (e.g. via a TCP proxy
    # that injects network faults), and any further settings.
    amqp_url: str | None = None
    database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def webhook_url(self) -> str:
        return self.webhook_url_of("ingress")

    def webhook_url_of(self, replica: str) -> str:
        """The webhook URL of one ingress replica ("ingress", "ingress-2")."""
        return f"http://127.0.0.1:{self.ports[replica]}/webhook"

    def env(self) -> dict[str, str]:
        chosen = {
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
            "GRAPH_API_BASE_URL": self.graph_api_base_url,
            "CIVICLINE_AMQP_URL": self.amqp_url or self.environment.amqp_url,
            "CIVICLINE_DATABASE_URL": self.database_url or self.environment.database_url,
            "INGRESS_PORT": str(self.ports["ingress"]),
            "ROUTER_PORT": str(self.ports["router"]),
            "RESPONDER_PORT": str(self.ports["responder"]),
            "AUDIT_PORT": str(self.ports["audit"]),
            "CIVICLINE_SHUTDOWN_TIMEOUT": "10",
            **self.extra_env,
        }
        # A NAME_FILE of the caller's environment would clash with the NAME set here.
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not (name.endswith("_FILE") and name.removesuffix("_FILE") in chosen)
        }
        return {**inherited, **chosen}

    def start(self, service: str) -> None:
        """Start `service` ("router"), or another replica of it ("responder-2")."""
        module = service.split("-", 1)[0]
        env = self.env()
        env[f"{module.upper()}_PORT"] = str(self.ports.setdefault(service, free_port()))
        log = (self.log_dir / f"{service}.log").open("ab")
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", f"civicline.{module}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    async def wait_ready(self, service: str, timeout: float = 60.0, probe: str = "readyz") -> None:
        """Wait until the service answers /readyz with 200 (its dependencies are reachable
        and it consumes), or /healthz (it is up) if `probe` says so, failing early if the
        process exits."""
        url = f"http://127.0.0.1:{self.ports[service]}/{probe}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                process = self.processes[service]
                if process.poll() is not None:
                    raise AssertionError(
                        f"{service} exited with {process.returncode}:\n{self.log_tail(service)}"
                    )
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as answer:
                        if answer.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(
                    f"{service} not ready after {timeout}s:\n{self.log_tail(service)}"
                )
        if not listens_on(process.pid, self.ports[service]):
            raise AssertionError(
                f"another process answers on {service}'s port {self.ports[service]}:\n"
                f"{self.log_tail(service)}"
            )

    async def is_ready(self, service: str) -> bool:
        url = f"http://127.0.0.1:{self.ports[service]}/readyz"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as answer,
            ):
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def start_all(self) -> None:
        for service in SERVICES:
            self.start(service)
        for service in SERVICES:
            await self.wait_ready(service)

    @contextlib.asynccontextmanager
    async def started(self, *replicas: str) -> AsyncIterator[Pipeline]:
        """The four services (and `replicas`, such as "responder-2") started and ready for the
        block; then stopped with SIGTERM, ingress first. Each must drain and exit 0: a
        graceful shutdown is part of the contract."""
        try:
            await self.start_all()
            for replica in replicas:
                self.start(replica)
                await self.wait_ready(replica)
            yield self
        finally:
            exit_codes = await self.stop_all()
        assert exit_codes == dict.fromkeys(exit_codes, 0), exit_codes

    async def stop(self, service: str, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        process = self.processes[service]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{service} ignored SIGTERM for {timeout}s") from None

    async def stop_all(self) -> dict[str, int]:
        # Ingress first, so no new work enters while the consumers drain.
        order = [s for s in SERVICES if s in self.processes]
        order += [s for s in self.processes if s not in SERVICES]
        return {s: await self.stop(s) for s in order}

    def kill(self, service: str) -> None:
        """SIGKILL: the process dies wherever it is, as on an OOM kill or a node loss."""
        process = self.processes[service]
        process.kill()
        process.wait()

    async def restart(self, service: str) -> None:
        self.start(service)
        await self.wait_ready(service)

    def log_events(self, *events: str) -> str:
        """Every service's log lines that name one of `events` (e.g. why work was left)."""
        found = [
            f"{path.stem}: {line}"
            for path in sorted(self.log_dir.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if any(event in line for event in events)
        ]
        return "\n".join(found) or "(none)"

    def log_tail(self, service: str, lines: int = 40) -> str:
        path = self.log_dir / f"{service}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# Meta's servers do not wait for our cores, so the simulator that stands in for them runs
# ahead of the pipeline under test where the OS allows it. At the same priority, on two cores
# kept busy by the tests, it read its clock for a send 130-160 ms (p99; up to 300 ms) after the
# responder had written it, and so stamped sends that left evenly spaced (at most 94 in any
# second, for a limit of 100) up to 115 into one second. Ahead: 12-25 ms (p99), at most 95.
SIMULATOR_NICENESS = -10


async def start_simulator(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The Meta simulator as a process of its own (its clock then is not read by a loop that
    is busy sending a burst), ahead of the pipeline in the CPU's queue where the OS allows
    (SIMULATOR_NICENESS): (process, base URL), once it answers its health check."""
    port = free_port()
    log = (log_dir / "simulator.log").open("ab")
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before any traffic
        [
            sys.executable,
            "-m",
            "civicline.simulator",
            "serve",
            "--port",
            str(port),
            "--access-token",
            ACCESS_TOKEN,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        os.setpriority(os.PRIO_PROCESS, process.pid, SIMULATOR_NICENESS)
    except PermissionError:
        warnings.warn(
            "the simulator runs at the tests' own priority (raising it needs CAP_SYS_NICE): on "
            "a busy machine the send times it records include its own wait for a core",
            stacklevel=2,
        )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"{url}/_sim/health") as answer:
                    if answer.status == 200:
                        return process, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the simulator did not start")
