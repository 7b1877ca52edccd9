"""The surge drill (issue 6, items 1 and 2): the four services as processes on the real
RabbitMQ and Postgres, the simulator as Meta on both sides, virtual citizens ramped through
offered rates, a status webhook (sent, delivered, read) sent back for every reply, and the
raw broker and database ceilings measured on the same vhost and database just before.

    .venv/bin/python bench/surge.py [--rates 50,100,200,400] [--step-seconds 10] [--out DIR]

It reuses the test suite's support code (tests/support): the isolated environment, the
pipeline runner and the queue-depth probe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))  # hotspots, also when this file is loaded by path

import aio_pika  # noqa: E402
import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import hotspots  # noqa: E402  (bench/, beside this script)
from webhook_client import WebhookClient, WebhookClientError  # noqa: E402

from civicline.common.amqp import Broker, Publisher  # noqa: E402
from civicline.common.service import new_event_loop  # noqa: E402
from civicline.ingress.app import publish_webhook, webhook_event_id  # noqa: E402
from civicline.simulator.signing import SIGNATURE_HEADER, sign  # noqa: E402
from civicline.simulator.webhooks import status_webhook, text_message_webhook  # noqa: E402
from support.accounting import queue_depths  # noqa: E402
from support.isolation import Environment, create_environment, drop_environment  # noqa: E402
from support.pipeline import APP_SECRET, Pipeline, start_simulator  # noqa: E402
from support.traffic import QUESTIONS  # noqa: E402

SEND_RATE = 1000  # Meta's upgraded tier; the default 80/s would cap the drill, not the pipeline
INGRESS_P99_BOUND_MS = 1000.0
REPLY_P99_BOUND_MS = 5000.0
STATUSES = ("sent", "delivered", "read")
# The quorum queues bound to inbound.webhook: every webhook ingress accepts is appended to both.
INGRESS_QUEUES = ("router.inbound", "audit.events")
# A step that ends with more than this many seconds of its work still queued ends the ramp.
BACKLOG_SECONDS = 3.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


@dataclass
class Post:
    """One webhook POSTed to ingress."""

    step: int
    kind: str  # "message" or a status
    key: str  # the citizen's wamid, or "<reply wamid>:<status>"
    sent_at: float  # wall clock, comparable with the simulator's and Postgres's clocks
    latency: float | None = None
    status: int = 0


@dataclass
class Drill:
    client: WebhookClient
    simulator_url: str
    session: aiohttp.ClientSession
    posts: list[Post] = field(default_factory=list)
    message_sent_at: dict[str, float] = field(default_factory=dict)
    message_step: dict[str, int] = field(default_factory=dict)
    reply_at: dict[str, float] = field(default_factory=dict)
    replies: Counter[str] = field(default_factory=Counter)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    step: int = 0
    after: int = 0
    statuses: tuple[str, ...] = STATUSES
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(512))

    async def post(self, post: Post, body: bytes) -> None:
        request = self.client.request(body, {SIGNATURE_HEADER: sign(body, APP_SECRET)})
        async with self.limit:
            loop = asyncio.get_running_loop()
            post.sent_at = time.time()
            started = loop.time()
            try:
                post.status = await self.client.post(request)
            except (WebhookClientError, TimeoutError):
                post.status = 0
            post.latency = loop.time() - started
        self.posts.append(post)

    def spawn(self, post: Post, body: bytes) -> None:
        task = asyncio.create_task(self.post(post, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def citizens(self, rate: float, seconds: float, serial: int) -> None:
        """Offer `rate` citizen messages per second for `seconds`, paced against the clock
        (a late tick sends what it owes, so a slow loop does not lower the offered rate)."""
        loop = asyncio.get_running_loop()
        start, total = loop.time(), int(rate * seconds)
        for i in range(total):
            due = start + i / rate
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            body, wamid = text_message_webhook(
                wa_id=f"82{serial:02d}{i:08d}", text=QUESTIONS[i % len(QUESTIONS)]
            )
            self.message_sent_at[wamid] = time.time()
            self.message_step[wamid] = self.step
            self.spawn(Post(self.step, "message", wamid, time.time()), body)

    async def poll_replies(self) -> None:
        """Read the simulator's record of sends; answer every new reply with its statuses."""
        while True:
            try:
                async with self.session.get(
                    f"{self.simulator_url}/_sim/sent", params={"after": str(self.after)}
                ) as answer:
                    sends: list[dict[str, Any]] = await answer.json()
            except (aiohttp.ClientError, TimeoutError):
                sends = []
            for send in sends:
                self.after = max(self.after, int(send["sequence"]))
                context = send["body"].get("context")
                if not isinstance(context, dict) or not send.get("wamid"):
                    continue
                inbound = context.get("message_id")
                if not isinstance(inbound, str):
                    continue
                self.replies[inbound] += 1
                if self.replies[inbound] > 1:
                    continue
                self.reply_at[inbound] = datetime.fromisoformat(send["received_at"]).timestamp()
                for state in self.statuses:
                    body = status_webhook(
                        wamid=send["wamid"], status=state, recipient_id=str(send["to"])
                    )
                    key = f"{send['wamid']}:{state}"
                    self.spawn(Post(self.step, state, key, time.time()), body)
            await asyncio.sleep(0.2)


# The responder's catalog ------------------------------------------------------------------

CATALOG = ROOT / "services" / "responder" / "src" / "civicline" / "responder" / "catalog.toml"


OFFICE_SAYS = {
    "closed": "office closed (an away notice follows each new conversation's first reply)",
    "open": "office open (no away notices)",
}


def drill_catalog(text: str, office: str) -> str:
    """The shipped catalog with its office always closed (every new conversation also gets
    the away notice, a second send) or open (none), so the drill's load does not depend on
    the hour in Seoul when it runs. The office table comes last in the catalog."""
    start = text.index("\n[office]\n")
    if office == "open":
        return text[: start + 1]
    hours = text.index("\n[office.hours]\n", start)
    away = text.index("\n[office.away.", hours)
    # An hours table naming no day: closed every day.
    return text[: hours + 1] + "[office.hours]\n" + text[away:]


# Ceilings ---------------------------------------------------------------------------------


async def amqp_ceilings(amqp_url: str, seconds: float) -> tuple[dict[str, float], str]:
    """Publish-with-confirm (persistent, quorum queue, many in flight), then consume+ack."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        server: Any = getattr(
            getattr(connection.transport, "connection", None), "server_properties", {}
        )
        version = server.get("version", b"?")
        version = version.decode() if isinstance(version, bytes) else str(version)
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            "bench.ceiling", durable=True, arguments={"x-queue-type": "quorum"}
        )
        body = b"x" * 1024
        loop = asyncio.get_running_loop()
        published, publish_rate = await publish_loop(
            seconds,
            lambda: channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name,
            ),
        )

        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=256)
        queue = await consumer.declare_queue("bench.ceiling", passive=True)
        consumed = 0
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            # One `multiple` ack per 64 deliveries, as the services' consumers ack together
            nonlocal consumed
            consumed += 1
            if consumed % 64 == 0 or consumed >= published:
                await message.ack(multiple=True)
            if consumed >= published:
                done.set()

        start = loop.time()
        tag = await queue.consume(on_message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=seconds)
        consume_rate = consumed / (loop.time() - start)
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
    route_rate = await ingress_route_ceiling(amqp_url, seconds)
    return {
        "publish_confirm": publish_rate,
        "consume_ack": consume_rate,
        "publish_confirm_ingress_route": route_rate,
    }, version


async def publish_loop(
    seconds: float, publish: Callable[[], Awaitable[object]], in_flight: int = 256
) -> tuple[int, float]:
    """Publish `in_flight` at a time, each batch awaited, for `seconds`: (count, per second)."""
    loop = asyncio.get_running_loop()
    published, start = 0, loop.time()
    while loop.time() - start < seconds:
        await asyncio.gather(*(publish() for _ in range(in_flight)))
        published += in_flight
    return published, published / (loop.time() - start)


async def ingress_route_ceiling(amqp_url: str, seconds: float) -> float:
    """The raw ceiling above, for what ingress publishes where it publishes it: ingress's own
    publish (publish_webhook: a signed webhook with its properties and headers, to the
    civicline exchange as inbound.webhook, so into both quorum queues bound to that key)
    through the services' Publisher, without the HTTP server in front. The two queues are
    purged after."""
    broker = Broker(amqp_url, connection_name="civicline-bench-ceiling")
    await broker.connection()
    publisher = Publisher(broker, timeout=30.0)
    body = text_message_webhook(wa_id="829900000001", text=QUESTIONS[0])[0]
    signature, raw_event_id = sign(body, APP_SECRET), webhook_event_id(body)
    try:
        _, rate = await publish_loop(
            seconds,
            lambda: publish_webhook(publisher, body, raw_event_id, signature, "application/json"),
        )
    finally:
        await broker.close()
    await purge(amqp_url, INGRESS_QUEUES)
    return rate


async def purge(amqp_url: str, queues: tuple[str, ...]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            await (await channel.declare_queue(name, passive=True)).purge()


async def insert_ceiling(database_url: str, seconds: float) -> tuple[float, str]:
    """Batches of 1,000 audit-shaped rows into a temporary table."""
    connection = await asyncpg.connect(database_url)
    try:
        version: str = await connection.fetchval("SELECT version()")
        await connection.execute(
            "CREATE TEMP TABLE bench_ceiling (seq bigint, kind text, correlation_id text,"
            " occurred_at timestamptz DEFAULT now(), payload json)"
        )
        payload = json.dumps({"text": "x" * 200})
        loop = asyncio.get_running_loop()
        rows, start = 0, loop.time()
        while loop.time() - start < seconds:
            batch = [(rows + i, "message.bench", f"wamid.{rows + i}", payload) for i in range(1000)]
            await connection.executemany(
                "INSERT INTO bench_ceiling (seq, kind, correlation_id, payload)"
                " VALUES ($1, $2, $3, $4)",
                batch,
            )
            rows += len(batch)
        return rows / (loop.time() - start), version.split(" on ")[0]
    finally:
        await connection.close()


# Profiles ---------------------------------------------------------------------------------


def start_profilers(
    pipeline: Pipeline, directory: Path, suffix: str = ""
) -> dict[str, subprocess.Popen[bytes]]:
    """py-spy on every service process for the whole load (sampling, so the services run at
    nearly full speed), writing collapsed stacks that `bench/hotspots.py` summarises and any
    flame-graph tool reads. py-spy needs ptrace rights (root, or CAP_SYS_PTRACE)."""
    directory.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    return {
        service: subprocess.Popen(
            [
                *(str(py_spy), "record", "--pid", str(process.pid), "--rate", "200"),
                *("--format", "raw", "--output", str(directory / f"{service}{suffix}.txt")),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for service, process in pipeline.processes.items()
    }


def stop_profilers(profilers: dict[str, subprocess.Popen[bytes]]) -> None:
    for profiler in profilers.values():
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for profiler in profilers.values():
        profiler.wait(timeout=30)


async def ingress_alone(
    pipeline: Pipeline,
    amqp_url: str,
    seconds: float,
    replicas: Sequence[str] = ("ingress",),
    concurrency: int = 256,
) -> dict[str, Any]:
    """Ingress with nothing consuming behind it: signed webhooks posted back to back by
    `concurrency` clients for `seconds`, spread over the `replicas` as a Kubernetes Service
    spreads connections over ingress pods; then the queues it filled are purged."""
    bodies = [
        text_message_webhook(wa_id=f"8299{i:08d}", text=QUESTIONS[i % len(QUESTIONS)])[0]
        for i in range(2048)
    ]
    latencies: list[float] = []
    failures = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    senders = [WebhookClient(pipeline.webhook_url_of(replica)) for replica in replicas]
    requests = [
        [sender.request(body, {SIGNATURE_HEADER: sign(body, APP_SECRET)}) for body in bodies]
        for sender in senders
    ]
    try:

        async def client(offset: int) -> None:
            nonlocal failures
            i = offset
            sender, own = senders[offset % len(senders)], requests[offset % len(senders)]
            while loop.time() < deadline:
                request = own[i % len(own)]
                i += concurrency
                started = loop.time()
                try:
                    status = await sender.post(request)
                except (WebhookClientError, TimeoutError):
                    status = 0
                if status != 200:
                    failures += 1
                    continue
                latencies.append(loop.time() - started)

        parts = {
            "ingress": [pipeline.processes[replica].pid for replica in replicas],
            "load generator": [os.getpid()],
            "rabbitmq": pids_named("beam.smp"),
        }
        meter = CpuMeter(parts)
        began, before = loop.time(), meter.read()
        await asyncio.gather(*(client(n) for n in range(concurrency)))
        elapsed = loop.time() - began
        cores = cpu_share(before, meter.read(), elapsed)
    finally:
        for sender in senders:
            sender.close()
    await purge(amqp_url, INGRESS_QUEUES)
    return {
        "replicas": len(replicas),
        "accepted_per_s": round(len(latencies) / elapsed, 1),
        "failed": failures,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "ingress_cores": cores["ingress"],
        "load_generator_cores": cores["load generator"],
        "rabbitmq_cores": cores["rabbitmq"],
    }


# CPU accounting ---------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mib(pid: int) -> float:
    """Resident memory of one process, in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


async def sample_memory(
    meter: CpuMeter, services: list[str], samples: list[tuple[float, dict[str, float]]]
) -> None:
    """Every service's resident memory every 10 s while the drill runs."""
    while True:
        samples.append((time.time(), meter.memory(services)))
        await asyncio.sleep(10)


# How often the drill vacuums and analyzes its database when the server's autovacuum is off.
MAINTENANCE_INTERVAL = 30.0


async def autovacuum_is_on(database_url: str) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        return bool(await connection.fetchval("SELECT current_setting('autovacuum') = 'on'"))
    finally:
        await connection.close()


async def play_autovacuum(database_url: str, runs: list[float]) -> None:
    """What autovacuum does on a production server, for one that has it off (a CI server
    often does): without ANALYZE the planner keeps the plans it cached while the tables were
    empty (sequential scans of tables that grow all through the drill), and without VACUUM
    the rows updated on every send pile up dead versions. Either turns the drill into a
    measure of a neglected database. Appends each run's seconds to `runs`."""
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            started = time.monotonic()
            await connection.execute("VACUUM (ANALYZE, SKIP_LOCKED)")
            runs.append(round(time.monotonic() - started, 2))
    finally:
        await connection.close()


def memory_growth(
    samples: list[tuple[float, dict[str, float]]], services: list[str]
) -> dict[str, dict[str, float]]:
    """Per service: resident memory once warmed up (the first sample after 60 s, or the first
    at all in a short drill), at the end, and the largest seen, in MiB. Flat means the end is
    within a few MiB of the warm reading, whatever the number of messages handled between."""
    if not samples:
        return {}
    start = samples[0][0]
    warm = next((mem for at, mem in samples if at - start >= 60), samples[0][1])
    last = samples[-1][1]
    return {
        name: {
            "warm_mib": warm[name],
            "end_mib": last[name],
            "max_mib": max(mem[name] for _, mem in samples),
            "minutes": round((samples[-1][0] - start) / 60, 1),
        }
        for name in services
    }


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
    return found


@dataclass
class CpuMeter:
    """CPU seconds spent by each part of the drill between two readings: the services and the
    simulator exactly; the load generator (this process); RabbitMQ (beam.smp) and PostgreSQL
    (every postgres process) as whole servers, so on a shared machine they include others'."""

    parts: dict[str, list[int]]

    @classmethod
    def for_pipeline(cls, pipeline: Pipeline, simulator: subprocess.Popen[bytes]) -> CpuMeter:
        parts = {name: [process.pid] for name, process in pipeline.processes.items()}
        parts["simulator"] = [simulator.pid]
        parts["load generator"] = [os.getpid()]
        parts["rabbitmq"] = pids_named("beam.smp")
        parts["postgres"] = pids_named("postgres")
        return cls(parts)

    def memory(self, services: list[str]) -> dict[str, float]:
        return {name: rss_mib(self.parts[name][0]) for name in services}

    def read(self) -> dict[str, float]:
        if "postgres" in self.parts:
            self.parts["postgres"] = sorted({*self.parts["postgres"], *pids_named("postgres")})
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.parts.items()}


def cpu_share(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores used by each part over the window (1.0 = one core busy the whole time)."""
    return {name: round((after[name] - before[name]) / seconds, 2) for name in before}


# Audit checks -----------------------------------------------------------------------------


async def audited(database_url: str) -> tuple[dict[str, float], set[str], list[float]]:
    """Citizen wamid → when its message row was recorded; the audited status keys; and the
    recorded_at of every audit row (for rows/s)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT kind, correlation_id, extract(epoch FROM recorded_at)::float8 AS at"
            " FROM audit_log"
        )
    finally:
        await connection.close()
    messages: dict[str, float] = {}
    statuses: set[str] = set()
    for row in rows:
        kind: str = row["kind"]
        if kind.startswith("message."):
            messages[row["correlation_id"]] = row["at"]
        elif kind.startswith("status."):
            statuses.add(f"{row['correlation_id']}:{kind.split('.', 1)[1]}")
    return messages, statuses, [row["at"] for row in rows]


# The drill --------------------------------------------------------------------------------


async def drill(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    environment: Environment | None = None
    simulator: subprocess.Popen[bytes] | None = None
    pipeline: Pipeline | None = None
    try:
        environment = await create_environment("bench")
        simulator, simulator_url = await start_simulator(log_dir)

        print(f"ceilings: {args.ceiling_seconds:g} s each ...", flush=True)
        amqp, rabbit_version = await amqp_ceilings(environment.amqp_url, args.ceiling_seconds)
        insert, postgres_version = await insert_ceiling(
            environment.database_url, args.ceiling_seconds
        )
        ceilings = {**amqp, "insert": insert}
        print(
            "ceilings: publish+confirm {publish_confirm:.0f}/s (on ingress's route, into both"
            " queues: {publish_confirm_ingress_route:.0f}/s), consume+ack {consume_ack:.0f}/s,"
            " batch insert {insert:.0f} rows/s".format(**ceilings),
            flush=True,
        )

        catalog = log_dir / f"catalog-office-{args.office}.toml"
        catalog.write_text(drill_catalog(CATALOG.read_text(encoding="utf-8"), args.office))
        pipeline = Pipeline(
            environment,
            simulator_url,
            log_dir,
            extra_env={
                "RESPONDER_SEND_RATE": str(SEND_RATE),
                "RESPONDER_CATALOG_PATH": str(catalog),
                # As in production: every event about a citizen sealed under their key.
                "AUDIT_PSEUDONYM_KEY": secrets.token_hex(32),
                "AUDIT_MASTER_KEY": secrets.token_hex(32),
            },
        )
        pipeline.start("ingress")
        await pipeline.wait_ready("ingress")
        alone_profile = (
            start_profilers(pipeline, out / "profiles", suffix="-alone") if args.profile else {}
        )
        alone = await ingress_alone(pipeline, environment.amqp_url, args.ceiling_seconds)
        stop_profilers(alone_profile)
        print(f"ingress alone: {ingress_alone_line(alone, ceilings)}", flush=True)
        # A second replica, as a second pod behind the Service: how far ingress scales out.
        pipeline.start("ingress-2")
        await pipeline.wait_ready("ingress-2")
        alone_two = await ingress_alone(
            pipeline, environment.amqp_url, args.ceiling_seconds, ("ingress", "ingress-2")
        )
        await pipeline.stop("ingress-2")
        del pipeline.processes["ingress-2"]
        print(f"ingress alone, 2 replicas: {ingress_alone_line(alone_two, ceilings)}", flush=True)
        for service in ("router", "responder", "audit"):
            pipeline.start(service)
        for service in ("router", "responder", "audit"):
            await pipeline.wait_ready(service)
        meter = CpuMeter.for_pipeline(pipeline, simulator)
        profilers = start_profilers(pipeline, out / "profiles") if args.profile else {}

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:  # the simulator's record
            state = Drill(WebhookClient(pipeline.webhook_url), simulator_url, session)
            state.statuses = () if args.no_statuses else STATUSES
            poller = asyncio.create_task(state.poll_replies())
            services = list(pipeline.processes)
            samples: list[tuple[float, dict[str, float]]] = []
            sampler = asyncio.create_task(sample_memory(meter, services, samples))
            maintenance_runs: list[float] = []
            autovacuum = await autovacuum_is_on(environment.database_url)
            maintainer = (
                None
                if autovacuum
                else asyncio.create_task(
                    play_autovacuum(environment.database_url, maintenance_runs)
                )
            )
            windows: list[tuple[float, float, float]] = []
            depths: list[dict[str, int]] = []
            cpu: list[dict[str, float]] = []
            memory: list[dict[str, float]] = []
            unaudited: list[int] = []
            for serial, rate in enumerate(args.rates):
                state.step = serial
                start, used = time.time(), meter.read()
                await state.citizens(rate, args.step_seconds, serial)
                end = time.time()
                cpu.append(cpu_share(used, meter.read(), end - start))
                memory.append(meter.memory(services))
                windows.append((rate, start, end))
                depths.append(await queue_depths(environment.amqp_url))
                seen, _, _ = await audited(environment.database_url)
                step_wamids = [w for w, s in state.message_step.items() if s == serial]
                unaudited.append(sum(1 for w in step_wamids if w not in seen))
                backlog = sum(depths[-1].values())
                print(
                    f"step {rate:g}/s: offered {len(step_wamids)}, unaudited at end "
                    f"{unaudited[-1]}, ready in queues {backlog}, webhooks not yet answered"
                    f" by ingress {len(state.tasks)}",
                    flush=True,
                )
                # Work still to do: what waits in the queues, what the load generator could
                # not post yet (ingress answering slowly), and the step's citizen messages
                # not yet through the pipeline.
                webhooks_behind = backlog + len(state.tasks)
                if (
                    webhooks_behind > rate * BACKLOG_SECONDS * (1 + len(state.statuses))
                    or unaudited[-1] > rate * BACKLOG_SECONDS
                ):
                    # Not keeping up: a higher step would only pile onto this backlog.
                    print(
                        f"ramp stopped: more than {BACKLOG_SECONDS:g} s of work still queued",
                        flush=True,
                    )
                    break

            # Drain: every accepted message replied and audited, every status posted and audited.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.drain_seconds
            while loop.time() < deadline:
                if state.tasks:
                    await asyncio.sleep(0.5)
                    continue
                seen, statuses, _ = await audited(environment.database_url)
                accepted = [p for p in state.posts if p.status == 200]
                if all(
                    (p.key in seen and p.key in state.reply_at)
                    if p.kind == "message"
                    else p.key in statuses
                    for p in accepted
                ):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)  # the last polled replies' statuses
            poller.cancel()  # first: it spawns posts, which must all end before the session
            while state.tasks:
                await asyncio.wait(set(state.tasks))
            state.client.close()
            sampler.cancel()
            if maintainer is not None:
                maintainer.cancel()
            stop_profilers(profilers)
            seen, statuses, recorded = await audited(environment.database_url)
            # What is missing is lost only if nothing is left to process; otherwise it may
            # still be on its way, and the report says how much was still pending.
            left_in_queues = sum((await queue_depths(environment.amqp_url)).values())

        steps = [
            summarise(
                serial, window, state, seen, statuses, recorded, ceilings, left_in_queues == 0
            )
            | {
                "unaudited_at_step_end": unaudited[serial],
                "queue_depths": depths[serial],
                "cpu_cores": cpu[serial],
                "rss_mib": memory[serial],
            }
            for serial, window in enumerate(windows)
        ]
        return {
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "rabbitmq": rabbit_version,
                "postgres": postgres_version,
            },
            "settings": {
                "step_seconds": args.step_seconds,
                "status_webhooks": not args.no_statuses,
                "responder_send_rate": SEND_RATE,
                "office": args.office,
                "audit_sealed": True,
                "server_autovacuum": autovacuum,
                "vacuum_analyze_runs_s": maintenance_runs,
                "bounds": {
                    "ingress_p99_ms": INGRESS_P99_BOUND_MS,
                    "reply_p99_ms": REPLY_P99_BOUND_MS,
                },
            },
            "ceilings": ceilings,
            "ingress_alone": alone,
            "ingress_alone_two_replicas": alone_two,
            "memory": memory_growth(samples, services),
            "memory_samples": [
                {"seconds": round(at - samples[0][0], 1), "rss_mib": mem} for at, mem in samples
            ],
            "steps": steps,
        }
    finally:
        await asyncio.shield(cleanup(pipeline, simulator, environment))


async def cleanup(
    pipeline: Pipeline | None,
    simulator: subprocess.Popen[bytes] | None,
    environment: Environment | None,
) -> None:
    if pipeline is not None:
        for service, process in pipeline.processes.items():
            try:
                await pipeline.stop(service)
            except AssertionError:
                print(f"{service} had to be killed", file=sys.stderr)
            if process.returncode not in (0, None):
                print(f"{service} exited with {process.returncode}", file=sys.stderr)
    if simulator is not None:
        simulator.terminate()
        await asyncio.to_thread(simulator.wait, 10)
    if environment is not None:
        await drop_environment(environment)


def summarise(
    serial: int,
    window: tuple[float, float, float],
    state: Drill,
    seen: dict[str, float],
    statuses: set[str],
    recorded: list[float],
    ceilings: dict[str, float],
    drained: bool,
) -> dict[str, Any]:
    """One step's row. With `drained` false (work was still queued when the drain window
    closed), what had not arrived is counted as pending, not lost: it may yet."""
    rate, start, end = window
    seconds = end - start
    posts = [p for p in state.posts if p.step == serial]
    messages = [p for p in posts if p.kind == "message"]
    accepted = [p for p in posts if p.status == 200]
    accepted_messages = [p for p in messages if p.status == 200]
    latencies = [p.latency for p in posts if p.latency is not None]
    reply_latencies = [
        state.reply_at[p.key] - state.message_sent_at[p.key]
        for p in accepted_messages
        if p.key in state.reply_at
    ]
    audit_lags = [
        seen[p.key] - state.message_sent_at[p.key] for p in accepted_messages if p.key in seen
    ]
    replies_in_window = sum(1 for at in state.reply_at.values() if start <= at < end)
    routed_in_window = sum(1 for at in seen.values() if start <= at < end)
    audit_rows_in_window = sum(1 for at in recorded if start <= at < end)
    missing = sum(1 for p in accepted_messages if p.key not in seen) + sum(
        1 for p in accepted if p.kind != "message" and p.key not in statuses
    )
    lost, pending = (missing, 0) if drained else (0, missing)
    duplicates = sum(1 for p in messages if state.replies[p.key] > 1)
    unanswered = sum(1 for p in accepted_messages if p.key not in state.reply_at)
    webhooks_per_s = len(accepted) / seconds
    row: dict[str, Any] = {
        "offered_per_s": rate,
        "seconds": round(seconds, 2),
        "citizen_messages": len(messages),
        "accepted_per_s": round(len(accepted_messages) / seconds, 1),
        "webhooks_accepted_per_s": round(webhooks_per_s, 1),
        "rejected": len(posts) - len(accepted),
        "replies_per_s": round(replies_in_window / seconds, 1),
        # Per 30 s of the step: a long step (the soak) shows whether the rate holds or decays.
        "replies_per_s_by_30s": [
            round(sum(1 for at in state.reply_at.values() if t <= at < t + 30) / 30, 1)
            for t in range(int(start), int(end) - 29, 30)
        ],
        "ingress_p50_ms": ms(percentile(latencies, 50)),
        "ingress_p99_ms": ms(percentile(latencies, 99)),
        "reply_p50_ms": ms(percentile(reply_latencies, 50)),
        "reply_p99_ms": ms(percentile(reply_latencies, 99)),
        "reply_max_ms": ms(max(reply_latencies, default=None)),
        "audit_lag_p50_ms": ms(percentile(audit_lags, 50)),
        "audit_lag_p99_ms": ms(percentile(audit_lags, 99)),
        "audit_rows_per_s": round(audit_rows_in_window / seconds, 1),
        "lost": lost,
        "pending_after_drain": pending,
        "duplicates": duplicates,
        "unanswered": unanswered,
        "ingress_vs_publish_ceiling": round(webhooks_per_s / ceilings["publish_confirm"], 3),
        "routed_per_s": round(routed_in_window / seconds, 1),
        "router_vs_consume_ceiling": round(routed_in_window / seconds / ceilings["consume_ack"], 3),
        "responder_vs_consume_ceiling": round(
            replies_in_window / seconds / ceilings["consume_ack"], 3
        ),
        "audit_vs_insert_ceiling": round(audit_rows_in_window / seconds / ceilings["insert"], 3),
    }
    row["sustained"] = bool(
        row["ingress_p99_ms"] is not None
        and row["ingress_p99_ms"] < INGRESS_P99_BOUND_MS
        and row["reply_p99_ms"] is not None
        and row["reply_p99_ms"] < REPLY_P99_BOUND_MS
        and lost == 0
        and pending == 0
        and duplicates == 0
        and unanswered == 0
        and row["rejected"] == 0
    )
    return row


COLUMNS = (
    ("offered/s", "offered_per_s"),
    ("accepted/s", "accepted_per_s"),
    ("webhooks/s", "webhooks_accepted_per_s"),
    ("routed/s", "routed_per_s"),
    ("replies/s", "replies_per_s"),
    ("ingress p50/p99 ms", ("ingress_p50_ms", "ingress_p99_ms")),
    ("reply p50/p99/max ms", ("reply_p50_ms", "reply_p99_ms", "reply_max_ms")),
    ("audit lag p50/p99 ms", ("audit_lag_p50_ms", "audit_lag_p99_ms")),
    ("unaudited at end", "unaudited_at_step_end"),
    ("queued at end", "queued_at_end"),
    ("lost", "lost"),
    ("pending after drain", "pending_after_drain"),
    ("dup", "duplicates"),
    ("ingress/publish ceil", "ingress_vs_publish_ceiling"),
    ("router/consume ceil", "router_vs_consume_ceiling"),
    ("responder/consume ceil", "responder_vs_consume_ceiling"),
    ("audit/insert ceil", "audit_vs_insert_ceiling"),
    ("ok", "sustained"),
)


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def per_step_table(steps: list[dict[str, Any]], key: str, title: str, number: str) -> list[str]:
    """A Markdown table of one per-part reading (`key`: part -> value) per step."""
    parts = list(steps[0][key]) if steps else []
    lines = ["", title, "", "| offered/s | " + " | ".join(parts) + " |"]
    lines.append("|---|" + "---|" * len(parts))
    for step in steps:
        values = [number.format(step[key][part]) for part in parts]
        lines.append(f"| {cell(step['offered_per_s'])} | " + " | ".join(values) + " |")
    return lines


def ingress_alone_line(alone: dict[str, Any], ceilings: dict[str, float]) -> str:
    rate = alone["accepted_per_s"]
    return (
        f"{rate:.0f} webhooks/s = {rate / ceilings['publish_confirm']:.0%} of the publish+confirm"
        f" ceiling, {rate / ceilings['publish_confirm_ingress_route']:.0%} of it on ingress's"
        f" route; p50 {alone['p50_ms']} ms, p99 {alone['p99_ms']} ms; cores used: ingress"
        f" {alone['ingress_cores']}, RabbitMQ {alone['rabbitmq_cores']}, the load generator"
        f" {alone['load_generator_cores']}"
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def markdown(result: dict[str, Any]) -> str:
    machine, ceilings = result["machine"], result["ceilings"]
    lines = [
        f"{machine['cores']} cores, Python {machine['python']}, RabbitMQ {machine['rabbitmq']},"
        f" {machine['postgres']}; RESPONDER_SEND_RATE={result['settings']['responder_send_rate']},"
        f" {result['settings']['step_seconds']:g} s per step,"
        f" {OFFICE_SAYS[result['settings']['office']]}, audit payloads sealed per citizen.",
        ""
        if result["settings"]["server_autovacuum"]
        else "The server's autovacuum is off: the drill ran VACUUM (ANALYZE) on its database every"
        f" {MAINTENANCE_INTERVAL:g} s, as autovacuum would"
        f" ({plural(len(result['settings']['vacuum_analyze_runs_s']), 'time')}).",
        "",
        f"Ceilings: publish+confirm {ceilings['publish_confirm']:.0f} msgs/s into one quorum"
        " queue; on ingress's route (ingress's own publish of a signed webhook, without its"
        " HTTP server, to the exchange as inbound.webhook, so into both queues bound to it)"
        f" {ceilings['publish_confirm_ingress_route']:.0f} msgs/s;"
        f" consume+ack {ceilings['consume_ack']:.0f} msgs/s;"
        f" batch insert {ceilings['insert']:.0f} rows/s.",
        "",
        "Ingress alone (nothing consuming, 256 clients back to back): "
        + ingress_alone_line(result["ingress_alone"], ceilings)
        + ".",
        "",
        "Ingress alone, two replicas (as two pods behind one Service, the clients spread over"
        " them): " + ingress_alone_line(result["ingress_alone_two_replicas"], ceilings) + ".",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for step in result["steps"]:
        step = step | {"queued_at_end": sum(step["queue_depths"].values())}
        cells = []
        for _, key in COLUMNS:
            keys = key if isinstance(key, tuple) else (key,)
            cells.append(" / ".join(cell(step[k]) for k in keys))
        lines.append("| " + " | ".join(cells) + " |")
    lines += per_step_table(
        result["steps"],
        "cpu_cores",
        "CPU used during each step, in cores (RabbitMQ and PostgreSQL are whole servers):",
        "{:.2f}",
    )
    lines += per_step_table(
        result["steps"],
        "rss_mib",
        "Resident memory of each service at the end of each step, MiB:",
        "{:.1f}",
    )
    growth = result.get("memory") or {}
    if growth:
        minutes = next(iter(growth.values()))["minutes"]
        lines += [
            "",
            f"Memory over the whole drill ({minutes:g} min), MiB, warm (after 1 min) -> end"
            " (max): "
            + ", ".join(
                f"{name} {g['warm_mib']:.0f} -> {g['end_mib']:.0f} ({g['max_mib']:.0f})"
                for name, g in growth.items()
            )
            + ".",
        ]
    lines += ["", result["final_line"]]
    if result.get("bottleneck"):
        lines += ["", result["bottleneck"]]
    if result.get("bottleneck_profile"):
        lines += ["", "```", result["bottleneck_profile"], "```"]
    return "\n".join(lines) + "\n"


# Where each consuming stage's backlog waits.
STAGE_QUEUES = {
    "router": "router.inbound",
    "responder": "responder.messages",
    "audit": "audit.events",
}


def bottleneck_stage(steps: list[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The stage that held back the first step that was not sustained (the one whose queue
    grew most; ingress when no queue did), with that step."""
    step = next((s for s in steps if not s["sustained"]), None)
    if step is None:
        return None
    depths = step["queue_depths"]
    backlog = {stage: depths.get(queue, 0) for stage, queue in STAGE_QUEUES.items()}
    stage, depth = max(backlog.items(), key=lambda item: item[1])
    return ("ingress" if depth == 0 else stage), step


def bottleneck(steps: list[dict[str, Any]], cores: int) -> str | None:
    """Which stage held back the first step that was not sustained, and whether the machine
    itself was out of CPU (then every stage competes with the others for it)."""
    found = bottleneck_stage(steps)
    if found is None:
        return None
    stage, step = found
    if stage == "ingress":
        where = f"ingress p99 {step['ingress_p99_ms']} ms with no queue backlog"
    else:
        where = (
            f"{step['queue_depths'].get(STAGE_QUEUES[stage], 0)} messages waiting in"
            f" {STAGE_QUEUES[stage]} at the step's end"
        )
    used = sum(step["cpu_cores"].values())
    text = (
        f"bottleneck at {cell(step['offered_per_s'])} citizen msgs/s: {stage} ({where};"
        f" it used {step['cpu_cores'].get(stage, 0):.2f} cores)."
    )
    if used >= 0.85 * cores:
        heaviest = sorted(step["cpu_cores"].items(), key=lambda item: -item[1])[:3]
        text += (
            f" The machine was out of CPU: the drill's parts used {used:.2f} of {cores} cores"
            " (most: " + ", ".join(f"{name} {share:.2f}" for name, share in heaviest) + ")."
        )
    return text


def bottleneck_profile(steps: list[dict[str, Any]], profiles: Path, top: int = 12) -> str | None:
    """Where the bottleneck stage spent its CPU over the ramp, from its py-spy profile."""
    found = bottleneck_stage(steps)
    if found is None:
        return None
    path = profiles / f"{found[0]}.txt"
    if not path.exists():
        return None
    return (
        f"Where {found[0]} spent its CPU over the ramp (py-spy, {path.name}; all of it:"
        f" bench/hotspots.py {path}):\n\n"
        + hotspots.summarise(hotspots.parse(path.read_text()), top)
    )


def final_line(steps: list[dict[str, Any]]) -> str:
    good = [s for s in steps if s["sustained"]]
    if not good:
        return "surge: no step sustained within bounds (ingress p99 < 1 s, reply p99 < 5 s, lost 0)"
    best = max(good, key=lambda s: s["offered_per_s"])
    return (
        f"surge: sustained {best['webhooks_accepted_per_s']:.0f} webhooks/s end to end, "
        f"{best['accepted_per_s']:.0f} citizen messages/s, "
        f"ingress p99 {best['ingress_p99_ms']:.0f} ms, reply p99 {best['reply_p99_ms']:.0f} ms, "
        f"lost {best['lost']}, duplicates {best['duplicates']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        # 50 first: on a slow 2-core machine (the load generator, simulator, broker and
        # database sharing it) 100/s is already beyond what it sustains.
        default=[50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0],
        help="offered citizen messages/s per step, comma-separated (default 50,100,250,500,"
        "1000,2000); the ramp stops after a step that leaves a backlog",
    )
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--drain-seconds", type=float, default=60.0)
    parser.add_argument(
        "--no-statuses",
        action="store_true",
        help="send no status webhooks back: citizen messages only (the issue's second target)",
    )
    parser.add_argument(
        "--office",
        choices=tuple(OFFICE_SAYS),
        default="closed",
        help="the responder's office hours during the drill: closed (default; each new"
        " conversation also gets the away notice, as on election night) or open",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record each service with py-spy during the load (collapsed stacks in OUT/profiles)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".run" / "bench")
    args = parser.parse_args()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            result = runner.run(drill(args))
    except KeyboardInterrupt:
        print("surge: interrupted; environment and processes cleaned up", file=sys.stderr)
        raise SystemExit(130) from None
    result["final_line"] = final_line(result["steps"])
    result["bottleneck"] = bottleneck(result["steps"], result["machine"]["cores"] or 1)
    if args.profile:
        result["bottleneck_profile"] = bottleneck_profile(result["steps"], args.out / "profiles")
    elif result["bottleneck"]:
        result["bottleneck"] += " `--profile` shows where its CPU goes."
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "surge.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "surge.md").write_text(table)
    print(table, end="")
    print(f"results: {args.out / 'surge.json'}, {args.out / 'surge.md'}")


if __name__ == "__main__":
    main()
