"""`civicline-audit <command>`: the tools around the audit log.

    civicline-audit                    run the service (also `serve`)
    civicline-audit keygen             write a tree-head signing key pair
    civicline-audit checkpoint         sign a tree head now
    civicline-audit export             write the log as NDJSON for offline verification
    civicline-audit verify             check the whole log against the public key
    civicline-audit inclusion          prove one event is in a signed checkpoint
    civicline-audit consistency        prove the log only grew since a saved checkpoint
    civicline-audit token create|list|revoke   bearer tokens of the query API (/v1)
    civicline-audit erase              destroy a citizen's data keys (crypto-shredding)
    civicline-audit months             the log's monthly partitions, their events and size
    civicline-audit retire             export, prove and detach a past month (the owner's act)

Exit status: 0 when the check holds, 1 when it does not, 2 for bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import orjson
import structlog

from civicline.audit import auditor, query, retention
from civicline.audit.adapters import erase_subject, latest_tree_head, sign_tree_head
from civicline.audit.app import load_privacy, load_signer
from civicline.audit.checkpoint import CheckpointError, Signer, Verifier
from civicline.audit.checkpointer import publish_tree_head
from civicline.audit.core import TreeHead
from civicline.audit.merkle import ProofError
from civicline.common.amqp import Broker, Publisher
from civicline.common.api_tokens import AUDITOR, token_hash
from civicline.common.settings import Settings, SettingsError

OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _settings() -> Settings:
    try:
        return Settings.from_env(service_name="audit-cli")
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _database_url(args: argparse.Namespace) -> str:
    return str(args.database_url or _settings().database_url)


def _read_text(value: str) -> str:
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else value
    except OSError as exc:
        raise UsageError(f"cannot read {value}: {exc.strerror}") from None


def _verifier(value: str) -> Verifier:
    try:
        return Verifier.parse(_read_text(value))
    except CheckpointError as exc:
        raise UsageError(f"--public-key: {exc}") from None


def _note(value: str) -> str:
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {value}: {exc.strerror}") from None


def keygen(args: argparse.Namespace) -> int:
    try:
        signer = Signer.generate(args.origin)
    except CheckpointError as exc:
        raise UsageError(f"--origin: {exc}") from None
    out = Path(args.out)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        descriptor = os.open(out, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{out} exists: a signing key is never overwritten") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(signer.encode() + "\n")
    public = out.with_name(out.name + ".pub")
    public.write_text(signer.verifier.encode() + "\n", encoding="utf-8")
    print(f"signing key: {out} (keep it secret; set AUDIT_SIGNING_KEY_FILE={out})")
    print(f"public key:  {public} (give it to auditors)")
    print(signer.verifier.encode())
    return OK


async def _publish(settings: Settings, signer: Signer, head: TreeHead) -> None:
    broker = Broker(settings.amqp_url, connection_name="civicline-audit-checkpoint")
    try:
        await asyncio.wait_for(broker.connection(), settings.publish_timeout)
        publisher = Publisher(broker, timeout=settings.publish_timeout)
        await publish_tree_head(head, signer, publisher=publisher, directory=None)
    except TimeoutError:
        print("warning: RabbitMQ unreachable, the tree head was not published", file=sys.stderr)
    finally:
        await broker.close()


async def _checkpoint(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        signer = load_signer(settings)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    if signer is None:
        raise UsageError("no signing key: set AUDIT_SIGNING_KEY_FILE (see civicline-audit keygen)")
    pool = await asyncpg.create_pool(args.database_url or settings.database_url, min_size=1)
    try:
        head = await sign_tree_head(pool, signer, forced=True)
        if head is None:
            async with pool.acquire() as connection:
                head = await latest_tree_head(connection)
            if head is None:
                print("the log is empty: no tree head to sign", file=sys.stderr)
                return OK
            print(
                f"the log has not grown since the head of size {head.tree_size}:", file=sys.stderr
            )
        else:
            await publish_tree_head(
                head, signer, publisher=None, directory=settings.audit_checkpoint_dir
            )
            if not args.no_publish:
                await _publish(settings, signer, head)
    finally:
        await pool.close()
    sys.stdout.write(head.checkpoint)
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, head.checkpoint, encoding="utf-8")
    return OK


async def _export(args: argparse.Namespace) -> int:
    url = _database_url(args)
    if args.out == "-":
        count = await auditor.export_database(url, sys.stdout)
    else:
        out = await asyncio.to_thread(Path(args.out).open, "w", encoding="utf-8")
        with out:
            count = await auditor.export_database(url, out)
    print(f"exported {count} events", file=sys.stderr)
    return OK


async def _verify(args: argparse.Namespace) -> int:
    verifier = _verifier(args.public_key)
    saved = tuple(_note(path) for path in args.checkpoint)
    if args.export:
        report = auditor.verify_export(Path(args.export), verifier, saved)
    else:
        report = await auditor.verify_database(_database_url(args), verifier, saved)
    for line in report.lines():
        print(line)
    return OK if report.ok else FAILED


async def _inclusion(args: argparse.Namespace) -> int:
    verifier = _verifier(args.public_key)
    event_id = None
    if args.event_id is not None:
        try:
            event_id = uuid.UUID(args.event_id)
        except ValueError:
            raise UsageError(f"--event-id {args.event_id!r} is not a UUID") from None
    result = await auditor.check_inclusion(
        _database_url(args), verifier, _note(args.checkpoint), seq=args.seq, event_id=event_id
    )
    print(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode())
    print(
        f"OK: event {result.event_id} (seq {result.seq}) is included, as stored, in the "
        f"signed tree of {result.tree_size} events"
    )
    return OK


async def _consistency(args: argparse.Namespace) -> int:
    verifier = _verifier(args.public_key)
    newer = _note(args.newer) if args.newer else None
    result = await auditor.check_consistency(
        _database_url(args), verifier, _note(args.checkpoint), newer
    )
    print(
        f"OK: the log of {result.second_size} events extends the saved one of "
        f"{result.first_size} events ({len(result.proof)} proof hashes)"
    )
    return OK


TOKEN_PREFIX = "cvl_"  # noqa: S105 (a prefix that makes tokens recognisable, not a secret)


async def _token(args: argparse.Namespace) -> int:
    connection = await asyncpg.connect(_database_url(args), timeout=10)
    try:
        if args.action == "create":
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            try:
                await connection.execute(
                    """INSERT INTO audit_api_token (token_id, name, role, token_hash)
                       VALUES ($1, $2, $3, $4)""",
                    uuid.uuid4(),
                    args.name,
                    args.role,
                    token_hash(token),
                )
            except asyncpg.UniqueViolationError:
                raise UsageError(f"a token named {args.name!r} exists already") from None
            except asyncpg.InsufficientPrivilegeError:
                raise UsageError(
                    "issuing a token is the owner's act: run this with the owner's database URL"
                    " (--database-url), not a service's"
                ) from None
            print(f"token {args.name!r} ({args.role}); shown once, only its hash is kept:")
            print(token)
        elif args.action == "list":
            for row in await connection.fetch(
                "SELECT name, role, created_at, revoked_at FROM audit_api_token ORDER BY created_at"
            ):
                state = "revoked " + row["revoked_at"].isoformat() if row["revoked_at"] else "live"
                print(f"{row['name']}\t{row['role']}\t{row['created_at'].isoformat()}\t{state}")
        else:
            revoked = await connection.fetchval(
                """UPDATE audit_api_token SET revoked_at = clock_timestamp()
                   WHERE name = $1 AND revoked_at IS NULL RETURNING name""",
                args.name,
            )
            if revoked is None:
                raise UsageError(f"no live token named {args.name!r}")
            print(f"revoked {args.name!r}")
    finally:
        await connection.close()
    return OK


async def _erase(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        keys = load_privacy(settings)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    if keys is None:
        raise UsageError("no keys: set AUDIT_PSEUDONYM_KEY and AUDIT_MASTER_KEY (or _FILE)")
    pool = await asyncpg.create_pool(args.database_url or settings.database_url, min_size=1)
    try:
        erasure = await erase_subject(pool, keys, args.wa_id, requested_by="civicline-audit erase")
        if not erasure.key_ids:
            print("this citizen has no live data key (never seen, or already erased)")
            return FAILED
        try:
            # The erased key's old row version stays on disk until vacuumed.
            await pool.execute("VACUUM audit_subject_key")
        except asyncpg.InsufficientPrivilegeError:
            print(
                "warning: VACUUM audit_subject_key as its owner to purge the old key",
                file=sys.stderr,
            )
    finally:
        await pool.close()
    print(
        f"erased citizen {erasure.subject.hex()}: {len(erasure.key_ids)} data key(s) destroyed, "
        f"{erasure.events} events now unreadable; recorded at seq {erasure.seq}"
    )
    return OK


async def _months(args: argparse.Namespace) -> int:
    connection = await asyncpg.connect(_database_url(args), timeout=10)
    try:
        found = await retention.months(connection)
    finally:
        await connection.close()
    print("partition\tfrom\tto\tevents\tseqs\tMiB")
    for month in found:
        seqs = "-" if month.first_seq is None else f"{month.first_seq}-{(month.end_seq or 0) - 1}"
        low = "start" if month.low is None else month.low.isoformat()
        print(
            f"{month.partition}\t{low}\t{month.high.isoformat()}\t{month.events}\t{seqs}\t"
            f"{month.size_bytes / 2**20:.1f}"
        )
    return OK


async def _retire(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if await asyncio.to_thread(out.exists):
        raise UsageError(f"{out} exists: an archive is never overwritten")
    try:
        done = await retention.retire_month(
            _database_url(args),
            args.partition,
            out,
            _verifier(args.public_key),
            requested_by=args.requested_by,
        )
    except retention.RetentionError as exc:
        print(f"not retired: {exc}", file=sys.stderr)
        return FAILED
    print(
        f"retired {done.partition}: events {done.first_seq} to {done.end_seq - 1} are in "
        f"{out} (sha256 {done.export_sha256}), which verifies; recorded at seq {done.seq}.\n"
        f"The detached table {done.partition} is still in the database: archive it "
        f"(pg_dump -t {done.partition}), then DROP TABLE {done.partition}."
    )
    return OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="civicline-audit", description="civicline's verifiable audit log."
    )
    commands = root.add_subparsers(dest="command", metavar="command")
    commands.add_parser("serve", help="run the audit service (the default)")

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database-url", help="default: $CIVICLINE_DATABASE_URL")
    public_key = argparse.ArgumentParser(add_help=False)
    public_key.add_argument(
        "--public-key", required=True, help="the log's verifier key, or a file holding it"
    )

    command = commands.add_parser("keygen", help="write a tree-head signing key pair")
    command.add_argument(
        "--origin", required=True, help="the log's name, e.g. audit.example.gov/civicline"
    )
    command.add_argument(
        "--out", required=True, help="private key file (0600); FILE.pub gets the public key"
    )

    command = commands.add_parser("checkpoint", parents=[database], help="sign a tree head now")
    command.add_argument("--out", help="also write the signed checkpoint to this file")
    command.add_argument("--no-publish", action="store_true", help="do not publish it on the bus")

    command = commands.add_parser("export", parents=[database], help="write the log as NDJSON")
    command.add_argument("--out", required=True, help="file to write, or - for stdout")

    command = commands.add_parser(
        "verify", parents=[database, public_key], help="verify the whole log"
    )
    command.add_argument("--export", help="verify this NDJSON export instead of the database")
    command.add_argument(
        "--checkpoint", action="append", default=[], help="a checkpoint saved earlier (repeatable)"
    )

    command = commands.add_parser(
        "inclusion", parents=[database, public_key], help="prove one event is in a checkpoint"
    )
    command.add_argument("--checkpoint", required=True, help="a signed checkpoint file")
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int)
    which.add_argument("--event-id")

    command = commands.add_parser(
        "consistency",
        parents=[database, public_key],
        help="prove the log only grew since a saved checkpoint",
    )
    command.add_argument("--checkpoint", required=True, help="the checkpoint saved earlier")
    command.add_argument("--newer", help="a newer checkpoint (default: the latest stored head)")

    command = commands.add_parser(
        "token", parents=[database], help="create, list or revoke query API tokens"
    )
    command.add_argument("action", choices=("create", "list", "revoke"))
    command.add_argument("--name", help="who holds it (create, revoke)")
    command.add_argument("--role", choices=query.ROLES, default=AUDITOR)

    command = commands.add_parser(
        "erase", parents=[database], help="destroy a citizen's data keys (their words)"
    )
    command.add_argument("--wa-id", required=True, help="the citizen's phone number or user id")

    commands.add_parser("months", parents=[database], help="list the log's monthly partitions")

    command = commands.add_parser(
        "retire",
        parents=[database, public_key],
        help="export, prove and detach a past month (as the log's owner)",
    )
    command.add_argument("--partition", required=True, help="e.g. audit_log_2025_01")
    command.add_argument("--out", required=True, help="the archive file to write (NDJSON)")
    command.add_argument(
        "--requested-by", required=True, help="who decided it, for the audit.retention event"
    )
    return root


COMMANDS = {
    "checkpoint": _checkpoint,
    "export": _export,
    "verify": _verify,
    "inclusion": _inclusion,
    "consistency": _consistency,
    "token": _token,
    "erase": _erase,
    "months": _months,
    "retire": _retire,
}


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.command in (None, "serve"):
        from civicline.audit.__main__ import serve  # the service, with its own logging

        serve()
        return OK
    # Tools print their results on stdout; log lines (warnings only) go to stderr.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    try:
        if args.command == "keygen":
            return keygen(args)
        if args.command == "token" and args.action != "list" and not args.name:
            raise UsageError(f"token {args.action} needs --name")
        return asyncio.run(COMMANDS[args.command](args))
    except UsageError as exc:
        print(f"civicline-audit {args.command}: {exc}", file=sys.stderr)
        return USAGE
    except (ProofError, CheckpointError, auditor.ExportError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return FAILED
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"civicline-audit {args.command}: {exc}", file=sys.stderr)
        return USAGE
