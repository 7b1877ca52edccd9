"""`make run`: the whole pipeline on this machine, in the foreground; Ctrl-C stops it cleanly.

Starts the Meta simulator (unless GRAPH_API_BASE_URL points elsewhere), creates the database
if needed, applies migrations, starts ingress, router, responder and audit with their output
prefixed, waits until each is ready, and prints the webhook URL and a sample command.
`python scripts/run.py sample "text"` sends one signed citizen message and prints the reply.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from civicline.common.migrate import migrate
from civicline.common.settings import DEFAULT_GRAPH_API_BASE_URL, Settings

# Development defaults, used only when neither NAME nor NAME_FILE is set: `make run` must work
# on a fresh clone. Real deployments set their own (see README).
DEV_DEFAULTS = {
    "WHATSAPP_APP_SECRET": "civicline-dev-app-secret",
    "WHATSAPP_VERIFY_TOKEN": "civicline-dev-verify-token",
    "WHATSAPP_ACCESS_TOKEN": "civicline-dev-access-token",
    # The campaign operator's token (README, "Broadcasts"): civicline-campaign sends it.
    "CAMPAIGN_OPERATOR_TOKENS": "civicline-dev-operator-token",
}
SERVICES = ("audit", "router", "responder", "ingress")
SAMPLE_TEXT = "투표소 위치 알려주세요"


# Local state of `make run` (git ignores it): the development signing key and tree heads.
RUN_DIR = Path(__file__).resolve().parents[1] / ".run"


def environment() -> dict[str, str]:
    env = dict(os.environ)
    for name, value in DEV_DEFAULTS.items():
        if not env.get(name) and not env.get(f"{name}_FILE"):
            env[name] = value
    if not env.get("AUDIT_SIGNING_KEY") and not env.get("AUDIT_SIGNING_KEY_FILE"):
        # A development key, so the auditor's workflow (README, "For auditors") can be tried
        # locally: tree heads are signed and written to .run/checkpoints.
        key = RUN_DIR / "audit-dev.key"
        if not key.exists():
            RUN_DIR.mkdir(exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "civicline.audit",
                    "keygen",
                    "--origin",
                    "localhost/civicline-dev",
                    "--out",
                    str(key),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        env["AUDIT_SIGNING_KEY_FILE"] = str(key)
        env.setdefault("AUDIT_CHECKPOINT_DIR", str(RUN_DIR / "checkpoints"))
    for name in ("AUDIT_PSEUDONYM_KEY", "AUDIT_MASTER_KEY"):
        if not env.get(name) and not env.get(f"{name}_FILE"):
            # Development secrets for citizens' pseudonyms and data keys, made once and kept
            # in .run (0600): losing the master key would make every sealed payload unreadable.
            path = RUN_DIR / f"{name.lower().replace('_', '-')}.dev"
            if not path.exists():
                RUN_DIR.mkdir(exist_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                    file.write(secrets.token_hex(32) + "\n")
            env[f"{name}_FILE"] = str(path)
    return env


async def ensure_database(database_url: str) -> None:
    """Create the database if it does not exist, then apply migrations."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    try:
        connection = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        print(f"created database {name}", flush=True)
        connection = await asyncpg.connect(database_url)
    try:
        for migration in await migrate(connection):
            print(f"applied migration {migration.version:04d}_{migration.name}", flush=True)
    finally:
        await connection.close()


async def pump(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{name:>9} | ".encode()
    while line := await stream.readline():
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.buffer.flush()


async def wait_ready(port: int, name: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None:
                raise SystemExit(f"{name} exited with {process.returncode}; see its output above")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


async def run_pipeline() -> int:
    env = environment()
    settings = Settings.from_env(env)
    await ensure_database(settings.database_url)
    commands: dict[str, list[str]] = {
        name: [sys.executable, "-m", f"civicline.{name}"] for name in SERVICES
    }
    use_simulator = settings.graph_api_base_url == DEFAULT_GRAPH_API_BASE_URL
    if use_simulator:
        port = str(urlsplit(DEFAULT_GRAPH_API_BASE_URL).port)
        # As Meta does, the simulator answers every message it accepted with its sent,
        # delivered and read status webhooks, signed with the app secret, to our ingress.
        webhook = f"http://127.0.0.1:{settings.ingress_port}/webhook"
        commands = {
            "simulator": [
                *(sys.executable, "-m", "civicline.simulator", "serve", "--port", port),
                *("--statuses-to", webhook),
            ],
            **commands,
        }
    processes: dict[str, asyncio.subprocess.Process] = {}
    pumps = []
    for name, command in commands.items():
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        assert process.stdout is not None
        processes[name] = process
        pumps.append(asyncio.create_task(pump(name, process.stdout)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def hang_up() -> None:
        # The terminal was closed. The services run in sessions of their own, so nothing else
        # stops them: stop them in order as on Ctrl-C, writing to nowhere (a write to the
        # vanished terminal would fail and end this process with the services still up).
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, sys.stdout.fileno())
        os.dup2(quiet, sys.stderr.fileno())
        stop.set()

    loop.add_signal_handler(signal.SIGHUP, hang_up)

    ports = {
        "ingress": settings.ingress_port,
        "router": settings.router_port,
        "responder": settings.responder_port,
        "audit": settings.audit_port,
    }
    ready: asyncio.Future[list[None]] = asyncio.gather(
        *(wait_ready(ports[n], n, processes[n]) for n in SERVICES)
    )
    stopping: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
    watched: list[asyncio.Future[object]] = [ready, stopping]  # type: ignore[list-item]
    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if ready in done and ready.exception() is None:
        graph = "the local Meta simulator" if use_simulator else settings.graph_api_base_url
        # Only the development token is printed; a token of one's own stays unsaid.
        dev_token = DEV_DEFAULTS["CAMPAIGN_OPERATOR_TOKENS"]
        operator_token = (
            dev_token if dev_token in settings.campaign_operator_tokens else "<your token>"
        )
        print(
            "\ncivicline is running.\n"
            f"  webhook URL : http://127.0.0.1:{settings.ingress_port}/webhook\n"
            f"  Graph API   : {graph}\n"
            f"  health      : http://127.0.0.1:{{{','.join(str(p) for p in ports.values())}}}"
            "/readyz\n"
            f"  audit key   : {env.get('AUDIT_SIGNING_KEY_FILE', '(none: heads unsigned)')}.pub\n"
            "Send a citizen's message and see the reply (in another terminal):\n"
            f'  make sample TEXT="{SAMPLE_TEXT}"\n'
            f"Campaigns (README, Broadcasts): operator API http://127.0.0.1:{settings.responder_port}"
            "/campaigns\n"
            f"  export CAMPAIGN_OPERATOR_TOKEN={operator_token}\n"
            "  .venv/bin/civicline-campaign create docs/examples/flood-warning.toml\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        await stop.wait()
    elif ready in done:
        ready.exception()  # already reported by the exiting service's output
        stop.set()
    else:
        ready.cancel()

    print("\nstopping…", flush=True)
    # Ingress first so nothing new enters, the simulator last so in-flight replies land.
    order = ["ingress", "router", "responder", "audit", "simulator"]
    codes = {}
    for name in (n for n in order if n in processes):
        process = processes[name]
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        codes[name] = await process.wait()
    await asyncio.gather(*pumps)
    print("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()), flush=True)
    return 0 if all(code == 0 for code in codes.values()) else 1


def sample(text: str, sender: str) -> int:
    env = environment()
    settings = Settings.from_env(env)
    command = [
        sys.executable,
        "-m",
        "civicline.simulator",
        "send",
        "--text",
        text,
        "--from",
        sender,
        "--webhook-url",
        f"http://127.0.0.1:{settings.ingress_port}/webhook",
    ]
    return subprocess.run(command, env=env, check=False).returncode


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "sample":
        text = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else SAMPLE_TEXT
        sender = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else "821052347781"
        sys.exit(sample(text, sender))
    sys.exit(asyncio.run(run_pipeline()))


if __name__ == "__main__":
    main()
