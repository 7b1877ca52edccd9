"""Each test run gets its own RabbitMQ vhost and Postgres database, so runs on one machine
(a developer's and CI's, or two branches) cannot disturb each other. Nothing is mocked: these
are the real servers, reached with the same URLs the services take."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from civicline.common.migrate import migrate

# Where the servers are; the defaults are those `make test` makes sure of.
ADMIN_AMQP_URL = os.environ.get("CIVICLINE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ADMIN_DATABASE_URL = os.environ.get(
    "CIVICLINE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass(frozen=True, slots=True)
class Environment:
    name: str
    amqp_url: str
    database_url: str


EnvironmentFactory = Callable[[str], Awaitable[Environment]]


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(path, safe="")))


def _rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise RuntimeError(
            "rabbitmqctl is not on PATH: the tests need it to create their own vhost "
            "(run `make test`, which installs and starts RabbitMQ where it can)"
        )
    result = subprocess.run(
        [tool, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}\n{_epmd_names()}"
        )
    return result.stdout


def _epmd_names() -> str:
    """What Erlang's port mapper knows: the CLI reaches the broker's node through it, and
    "nodistribution" above means the CLI could not use it (epmd gone, or the node with it)."""
    epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    try:
        names = subprocess.run([epmd, "-names"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"epmd -names: {exc}"
    return f"epmd -names (exit {names.returncode}): {(names.stdout + names.stderr).strip()}"


async def create_database(name: str, *, migrated: bool = True) -> str:
    """A new database called `name` (migrated unless told not to); returns its URL."""
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    database_url = _with_path(ADMIN_DATABASE_URL, name)
    if migrated:
        connection = await asyncpg.connect(database_url)
        try:
            await migrate(connection)
        finally:
            await connection.close()
    return database_url


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# Which machine made a name: runs elsewhere that share the servers are never judged from
# here (their pids mean nothing on this machine).
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


# Set by tests/conftest.py in the pytest process that starts the run, before any worker:
# pytest-xdist's workers and the processes tests start (the surge drill) inherit it.
RUN_PID_VARIABLE = "CIVICLINE_TEST_RUN_PID"


def _run_pid() -> int:
    """The pid of the pytest process running the tests. Names carry it, not the pid of a
    worker or of a drill a test started: their command lines do not say pytest, so their
    names would look abandoned to a sweep elsewhere in the run."""
    return int(os.environ.get(RUN_PID_VARIABLE) or os.getpid())


def unique_name(label: str) -> str:
    _sweep_once()
    return f"civicline_test_{label}_{HOST_TAG}_{_run_pid()}_{secrets.token_hex(3)}"


_TEST_NAME = re.compile(r"civicline_test_.+_(?P<host>[0-9a-f]{6})_(?P<pid>\d+)_[0-9a-f]{6}")


def _abandoned(name: str) -> bool:
    """A name unique_name made on this machine in a process that is no longer a test run."""
    match = _TEST_NAME.fullmatch(name)
    if match is None or match["host"] != HOST_TAG:
        return False
    try:
        command = Path(f"/proc/{match['pid']}/cmdline").read_bytes()
    except OSError:
        return True
    return b"pytest" not in command


@functools.cache
def _sweep_once() -> None:
    """Before a run makes its first vhost or database, drop those of earlier runs that were
    killed before they could: their quorum queues and message stores keep holding the
    broker's file handles (about 900 under the default ulimit, shared by every run on the
    machine), and once those run out the broker stops accepting connections and creating
    vhosts until handles are freed. Only runs that need the servers get here. (In a thread
    of its own: the caller may be inside the test's event loop.)"""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, drop_abandoned_environments()).result()


def list_vhosts() -> list[str]:
    return _rabbitmqctl("list_vhosts", "--silent", "name").split()


async def list_test_databases() -> list[str]:
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        rows = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'civicline\\_test\\_%'"
        )
    finally:
        await admin.close()
    return [row["datname"] for row in rows]


async def drop_abandoned_environments() -> list[str]:
    """Drop every test vhost and database whose run has ended without dropping them (it was
    killed); those of runs still going are left alone. Returns the names dropped."""
    vhosts = list_vhosts()
    databases = await list_test_databases()
    dropped = []
    for name in sorted({*vhosts, *databases}):
        if not _abandoned(name):
            continue
        if name in vhosts:
            delete_vhost(name, missing_ok=True)  # another run's sweep may be a step ahead
        if name in databases:
            await drop_database(name)
        dropped.append(name)
    return dropped


def queue_counts(vhost: str) -> dict[str, tuple[int, int]]:
    """Each queue of the vhost: (ready, unacknowledged), as the broker counts them (a passive
    declare reports only the ready ones)."""
    listed = _rabbitmqctl(
        "list_queues", "-p", vhost, "--silent", "name", "messages_ready", "messages_unacknowledged"
    )
    counts = {}
    for line in listed.splitlines():
        name, ready, unacknowledged = line.split()
        counts[name] = (int(ready), int(unacknowledged))
    return counts


def add_vhost(name: str, *, user: str | None = None) -> None:
    """A new vhost; with `user`, who may configure, write and read everything in it.

    One `rabbitmqctl import_definitions` does both: each rabbitmqctl boots an Erlang VM (about
    a second of CPU), and a run makes dozens of vhosts. The CLI applies the definitions over
    RPC before it returns, whatever its "asynchronous" message says; every test that
    connects right after relies on that, and tests/integration/test_isolation.py checks it.
    With no path it reads stdin (3.10; later releases accept "-" as well)."""
    definitions: dict[str, list[dict[str, str]]] = {"vhosts": [{"name": name}]}
    if user is not None:
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        definitions["permissions"] = [{"user": user, "vhost": name, **everything}]
    _rabbitmqctl("import_definitions", stdin=json.dumps(definitions))


def delete_vhost(name: str, *, missing_ok: bool = False) -> None:
    try:
        _rabbitmqctl("delete_vhost", name)
    except RuntimeError:
        if missing_ok and name not in list_vhosts():
            return
        raise


async def create_environment(label: str) -> Environment:
    """A fresh vhost (guest has full rights in it) and a fresh, migrated database."""
    name = unique_name(label)
    add_vhost(name, user=urlsplit(ADMIN_AMQP_URL).username or "guest")
    database_url = await create_database(name)
    return Environment(name, _with_path(ADMIN_AMQP_URL, name), database_url)


async def drop_environment(environment: Environment) -> None:
    delete_vhost(environment.name)
    await drop_database(environment.name)
