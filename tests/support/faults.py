"""Faults injected into the machine's real RabbitMQ and Postgres servers.

These stop and start the servers themselves, so they run only in the reliability suite, in
tests marked `alone` (make test runs those one at a time, after every other test), and always
put the server back (a `finally` restarts it even when a test fails).
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlsplit

from support.isolation import ADMIN_DATABASE_URL


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def rabbitmq_stop_app() -> None:
    _run("rabbitmqctl", "stop_app")


def rabbitmq_start_app() -> None:
    _run("rabbitmqctl", "start_app")
    _run("rabbitmqctl", "await_startup")


def postgres_cluster() -> tuple[str, str]:
    """(version, name) of the local cluster serving the tests' Postgres port."""
    if shutil.which("pg_lsclusters") is None:
        raise RuntimeError("pg_lsclusters is not on PATH: cannot stop and start Postgres here")
    port = str(urlsplit(ADMIN_DATABASE_URL).port or 5432)
    for line in _run("pg_lsclusters", "--no-header").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == port:
            return fields[0], fields[1]
    raise RuntimeError(f"no local Postgres cluster on port {port}")


def postgres_stop_immediate() -> None:
    version, name = postgres_cluster()
    _run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "stop", "-m", "immediate")


def postgres_start() -> None:
    version, name = postgres_cluster()
    _run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
