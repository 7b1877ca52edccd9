"""`civicline-campaign`: run broadcast campaigns through the responder's operator API.

    civicline-campaign create flood.toml [--list citizens.csv] [--draft]
    civicline-campaign list
    civicline-campaign show <id> [--watch]
    civicline-campaign pause|resume|cancel|schedule <id>
    civicline-campaign recipients <id> --state in_doubt > in-doubt.csv

The API is at --url (default http://127.0.0.1:$RESPONDER_PORT, port 8082); the operator's token
comes from $CAMPAIGN_OPERATOR_TOKEN or --token-file. README, "Broadcasts", has the spec format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ACTIONS = ("schedule", "pause", "resume", "cancel")


class ApiError(RuntimeError):
    pass


class Api:
    def __init__(self, url: str, token: str) -> None:
        self._url = url.rstrip("/")
        self._token = token

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "",
        *,
        raw: bool = False,
    ) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the operator's own URL
            f"{self._url}{path}", data=body, method=method
        )
        request.add_header("Authorization", f"Bearer {self._token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310
                data = answer.read()
                return data.decode("utf-8") if raw else json.loads(data or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise ApiError(f"HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach {self._url}: {exc.reason}") from None


def read_spec(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    document = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(document, dict):
        raise ApiError(f"{path}: a campaign spec is a JSON object or a TOML document")
    return document


def describe(campaign: dict[str, Any]) -> str:
    lines = [
        f"{campaign['id']}  {campaign['name']!r}  {campaign['state']}",
        f"  template {campaign['spec']['template']['name']}  "
        f"audience {campaign['spec']['audience']}  send_at {campaign['spec']['send_at'] or 'now'}",
    ]
    progress = campaign.get("progress")
    if progress:
        failed = ", ".join(f"{code}: {n}" for code, n in progress["failed"].items()) or "0"
        skipped = ", ".join(f"{why}: {n}" for why, n in progress["skipped"].items()) or "0"
        lines.append(
            f"  recipients {progress['total']}  queued {progress['queued']}  "
            f"sending {progress['sending']}  sent {progress['sent']}  "
            f"delivered {progress['delivered']}  read {progress['read']}"
        )
        lines.append(
            f"  failed {failed}  in doubt {progress['in_doubt']}  skipped {skipped}  "
            f"cancelled {progress['cancelled']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="civicline-campaign", description=__doc__.split("\n")[0])
    port = os.environ.get("RESPONDER_PORT", "8082")
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}", help="the responder")
    parser.add_argument("--token-file", type=Path, help="default: $CAMPAIGN_OPERATOR_TOKEN")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create (and schedule) a campaign from a spec")
    create.add_argument("spec", type=Path, help="a .toml or .json campaign spec")
    create.add_argument("--list", type=Path, help="CSV of recipients: wa_id[,language]")
    create.add_argument("--draft", action="store_true", help="create it, do not schedule it")
    commands.add_parser("list", help="the latest campaigns")
    show = commands.add_parser("show", help="a campaign and its progress")
    show.add_argument("id")
    show.add_argument("--watch", action="store_true", help="repeat every 2 s until it ends")
    for action in ACTIONS:
        commands.add_parser(action, help=f"{action} a campaign").add_argument("id")
    export = commands.add_parser("recipients", help="a campaign's recipients in one state, as CSV")
    export.add_argument("id")
    export.add_argument("--state", default="in_doubt", help="default: in_doubt")
    args = parser.parse_args(argv)

    token = os.environ.get("CAMPAIGN_OPERATOR_TOKEN", "")
    if args.token_file:
        token = args.token_file.read_text(encoding="utf-8").strip()
    if not token:
        sys.exit("civicline-campaign: set CAMPAIGN_OPERATOR_TOKEN or pass --token-file")
    api = Api(args.url, token)
    try:
        run(api, args)
    except (ApiError, OSError, ValueError) as exc:
        sys.exit(f"civicline-campaign: {exc}")


def run(api: Api, args: argparse.Namespace) -> None:
    def show(campaign: Any) -> None:
        print(json.dumps(campaign, indent=2) if args.json else describe(campaign), flush=True)

    if args.command == "create":
        spec = read_spec(args.spec)
        if args.list is not None:
            spec.setdefault("audience", {})["list"] = True
        campaign = api.call("POST", "/campaigns", json.dumps(spec).encode(), "application/json")
        if args.list is not None:
            uploaded = api.call(
                "POST", f"/campaigns/{campaign['id']}/list", args.list.read_bytes(), "text/csv"
            )
            print(f"list: {uploaded['added']} recipients added", file=sys.stderr)
        if not args.draft:
            campaign = api.call("POST", f"/campaigns/{campaign['id']}/schedule")
        show(campaign)
    elif args.command == "list":
        for campaign in api.call("GET", "/campaigns"):
            show(campaign)
    elif args.command == "show":
        while True:
            campaign = api.call("GET", f"/campaigns/{args.id}")
            show(campaign)
            if not args.watch or campaign["state"] in ("completed", "cancelled"):
                break
            time.sleep(2)
    elif args.command == "recipients":
        path = f"/campaigns/{args.id}/recipients?state={args.state}"
        sys.stdout.write(api.call("GET", path, raw=True))
    else:
        show(api.call("POST", f"/campaigns/{args.id}/{args.command}"))


if __name__ == "__main__":
    main()
