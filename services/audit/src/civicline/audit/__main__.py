"""Run the audit service (`civicline-audit`, `civicline-audit serve` or `python -m
civicline.audit`), or one of its tools (`civicline-audit verify …`, see cli.py)."""

import sys

from civicline.audit.app import create_app
from civicline.audit.cli import run
from civicline.common.service import run_service
from civicline.common.settings import SettingsError


def serve() -> None:
    try:
        run_service("audit", create_app, port=lambda settings: settings.audit_port)
    except SettingsError as exc:
        sys.exit(f"civicline-audit: {exc}")


def main() -> None:
    arguments = sys.argv[1:]
    if not arguments or arguments == ["serve"]:
        serve()
        return
    sys.exit(run(arguments))


if __name__ == "__main__":
    main()
