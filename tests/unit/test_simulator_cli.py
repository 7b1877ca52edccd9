"""The `civicline-simulator` command, run as a real process against real HTTP peers.

The `send` test stands up a Simulator and a tiny webhook receiver that plays ingress+responder:
it checks Meta's signature on the raw bytes, then answers the citizen through the simulator, so
the CLI's wait-for-reply path runs end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from civicline.responder.graph import GraphClient, text_message
from civicline.simulator import Simulator
from civicline.simulator.__main__ import CliError, main, read_secret, resolve_app_secret

SECRET = "test-app-secret"
CITIZEN = "821052347781"
QUESTION = "투표소 위치 알려주세요"


class CitizenDesk:
    """A stand-in for ingress plus responder: verifies the signature, then replies via Graph."""

    def __init__(self, graph_base_url: str, *, reply: bool = True) -> None:
        self.graph_base_url = graph_base_url
        self.reply = reply
        self.received: list[dict[str, Any]] = []
        self.raw_bodies: list[bytes] = []
        self.replies: set[asyncio.Task[None]] = set()

    async def webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        header = request.headers.get("X-Hub-Signature-256", "")
        if not hmac.compare_digest(header.encode(), expected.encode()):
            return web.Response(status=401, text="bad signature")
        self.raw_bodies.append(raw)
        value = json.loads(raw)["entry"][0]["changes"][0]["value"]
        message = value["messages"][0]
        self.received.append(message)
        if self.reply:
            task = asyncio.create_task(self._answer(value["metadata"]["phone_number_id"], message))
            self.replies.add(task)
        return web.Response(text="EVENT_RECEIVED")

    async def _answer(self, phone_number_id: str, message: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as session:
            graph = GraphClient(
                session, base_url=self.graph_base_url, api_version="v25.0", access_token="tok"
            )
            body = f"답변: {message['text']['body']}"
            await graph.send(
                phone_number_id, text_message(message["from"], body, reply_to=message["id"])
            )


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


async def start_desk(desk: CitizenDesk) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/webhook", desk.webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/webhook"


@pytest.fixture
async def desk(sim: Simulator) -> AsyncIterator[tuple[CitizenDesk, str]]:
    receiver = CitizenDesk(sim.base_url)
    runner, url = await start_desk(receiver)
    yield receiver, url
    await runner.cleanup()
    await asyncio.gather(*receiver.replies)


@pytest.fixture
async def silent_desk(sim: Simulator) -> AsyncIterator[tuple[CitizenDesk, str]]:
    receiver = CitizenDesk(sim.base_url, reply=False)
    runner, url = await start_desk(receiver)
    yield receiver, url
    await runner.cleanup()


def cli_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WHATSAPP_") and k not in {"SIMULATOR_PORT", "INGRESS_PORT"}
    }
    env["PYTHONIOENCODING"] = "utf-8"
    return env


async def run_cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "civicline.simulator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode("utf-8"), err.decode("utf-8")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_send_posts_a_signed_message_and_prints_the_reply(
    sim: Simulator, desk: tuple[CitizenDesk, str]
) -> None:
    receiver, url = desk
    code, out, err = await run_cli(
        "send", "--text", QUESTION, "--from", CITIZEN, "--name", "김민지",
        "--webhook-url", url, "--secret", SECRET, "--simulator-url", sim.base_url, "--wait", "10",
    )  # fmt: skip
    assert code == 0, err
    status_line, reply_line = out.strip().splitlines()
    assert "HTTP 200" in status_line
    assert reply_line == f"답변: {QUESTION}"
    [message] = receiver.received
    assert message["text"] == {"body": QUESTION}
    assert message["from"] == CITIZEN
    assert message["id"] in status_line
    assert receiver.raw_bodies[0].isascii()  # Meta's escaped wire form
    [reply] = sim.sent(to=CITIZEN)
    assert reply.reply_to == message["id"]


async def test_send_fails_when_no_reply_arrives(
    sim: Simulator, silent_desk: tuple[CitizenDesk, str]
) -> None:
    receiver, url = silent_desk
    code, out, err = await run_cli(
        "send", "--text", QUESTION, "--webhook-url", url, "--secret", SECRET,
        "--simulator-url", sim.base_url, "--wait", "0.5",
    )  # fmt: skip
    assert code == 1
    assert "HTTP 200" in out
    assert "no reply to 821052347781" in err
    assert len(receiver.received) == 1


async def test_send_fails_on_a_non_200_answer(
    sim: Simulator, desk: tuple[CitizenDesk, str]
) -> None:
    receiver, url = desk
    code, out, err = await run_cli(
        "send", "--text", QUESTION, "--webhook-url", url, "--secret", "not-the-secret",
        "--simulator-url", sim.base_url,
    )  # fmt: skip
    assert code == 1
    assert "HTTP 401" in out
    assert "401" in err
    assert receiver.received == []


async def test_send_without_waiting_needs_no_simulator(
    silent_desk: tuple[CitizenDesk, str],
) -> None:
    receiver, url = silent_desk
    code, out, _ = await run_cli(
        "send", "--text", "hello", "--webhook-url", url, "--secret", SECRET,
        "--simulator-url", f"http://127.0.0.1:{closed_port()}", "--wait", "0",
    )  # fmt: skip
    assert code == 0
    assert "HTTP 200" in out
    assert len(receiver.received) == 1


async def test_send_reports_an_unreachable_simulator_before_posting(
    silent_desk: tuple[CitizenDesk, str],
) -> None:
    receiver, url = silent_desk
    code, _, err = await run_cli(
        "send", "--text", "hello", "--webhook-url", url, "--secret", SECRET,
        "--simulator-url", f"http://127.0.0.1:{closed_port()}",
    )  # fmt: skip
    assert code == 2
    assert "not reachable" in err
    assert receiver.received == []


async def test_send_reports_an_unreachable_ingress(sim: Simulator) -> None:
    code, _, err = await run_cli(
        "send", "--text", "hello", "--secret", SECRET, "--simulator-url", sim.base_url,
        "--webhook-url", f"http://127.0.0.1:{closed_port()}/webhook",
    )  # fmt: skip
    assert code == 1
    assert "cannot post to" in err


async def test_serve_answers_sends_and_stops_cleanly_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "civicline.simulator", "serve", "--port", "0",
        "--access-token", "serve-token",
        stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    assert process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), 15)).decode()
        found = re.search(r"serving the Graph API on (http://\S+)", line)
        assert found, line
        base_url = found.group(1)
        async with aiohttp.ClientSession() as session:
            graph = GraphClient(
                session, base_url=base_url, api_version="v25.0", access_token="serve-token"
            )
            result = await graph.send("106512349876543", text_message(CITIZEN, QUESTION))
            async with session.get(f"{base_url}/_sim/sent", params={"to": CITIZEN}) as response:
                sent = await response.json()
        assert [s["wamid"] for s in sent] == [result.wamid]
        accepted_line = (await asyncio.wait_for(process.stderr.readline(), 15)).decode()
        assert "accepted send" in accepted_line
        assert "serve-token" not in accepted_line
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_secret_comes_from_the_first_of_a_rotation_list() -> None:
    env = {"WHATSAPP_APP_SECRET": " new-secret , old-secret"}
    assert resolve_app_secret(None, env) == "new-secret"
    assert resolve_app_secret("explicit", env) == "explicit"


def test_secret_may_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "app_secret"
    secret_file.write_text("  from-file\n", encoding="utf-8")
    env = {"WHATSAPP_APP_SECRET_FILE": str(secret_file)}
    assert read_secret(env, "WHATSAPP_APP_SECRET") == "from-file"
    assert resolve_app_secret(None, env) == "from-file"


def test_secret_and_secret_file_together_are_refused(tmp_path: Path) -> None:
    env = {"WHATSAPP_APP_SECRET": "a", "WHATSAPP_APP_SECRET_FILE": str(tmp_path / "x")}
    with pytest.raises(CliError, match="not both"):
        read_secret(env, "WHATSAPP_APP_SECRET")


def test_missing_secret_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot be read"):
        read_secret({"WHATSAPP_APP_SECRET_FILE": str(tmp_path / "absent")}, "WHATSAPP_APP_SECRET")


def test_send_without_any_secret_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "--text", "hi"], env={}) == 2
    assert "no app secret" in capsys.readouterr().err


def test_a_bad_port_variable_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"WHATSAPP_APP_SECRET": "s", "INGRESS_PORT": "eighty"}
    assert main(["send", "--text", "hi"], env=env) == 2
    assert "INGRESS_PORT" in capsys.readouterr().err


def test_serve_with_status_webhooks_but_no_secret_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Meta signs every webhook; an unsigned status would only be refused by ingress.
    assert main(["serve", "--statuses-to", "http://127.0.0.1:8080/webhook"], env={}) == 2
    assert "no app secret" in capsys.readouterr().err
