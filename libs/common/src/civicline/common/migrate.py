"""Versioned schema migrations: numbered plain SQL files in `sql/`, applied in order, once.

Run with `civicline-migrate` (or `python -m civicline.common.migrate`). Concurrent runs are
serialised by an advisory lock, and a changed file that was already applied is an error,
never silently skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from dataclasses import dataclass
from importlib import resources

import asyncpg

from civicline.common.settings import Settings, SettingsError, redact_url

# Arbitrary constant shared by every migrator: pg_advisory_lock key.
_LOCK_KEY = 0x6369_7669_636C


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("civicline.common").joinpath("sql").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


async def migrate(connection: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not yet applied; returns the ones applied now."""
    applied_now = []
    await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            row["version"]: row["checksum"]
            for row in await connection.fetch("SELECT version, checksum FROM schema_migrations")
        }
        for migration in available_migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(migration)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def _main(database_url: str) -> None:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        applied = await migrate(connection)
    finally:
        await connection.close()
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    print(f"schema up to date ({redact_url(database_url)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Apply civicline's database migrations.")
    parser.add_argument("--database-url", help="default: $CIVICLINE_DATABASE_URL")
    args = parser.parse_args(argv)
    try:
        url = args.database_url or Settings.from_env().database_url
    except SettingsError as exc:
        sys.exit(str(exc))
    try:
        asyncio.run(_main(url))
    except (OSError, asyncpg.PostgresError, MigrationError) as exc:
        sys.exit(f"civicline-migrate: {exc}")


if __name__ == "__main__":
    main()
