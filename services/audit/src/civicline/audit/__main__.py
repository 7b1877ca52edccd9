"""Run the audit service: `civicline-audit` or `python -m civicline.audit`."""

from civicline.audit.app import create_app
from civicline.common.service import run_service


def main() -> None:
    run_service("audit", create_app, port=lambda settings: settings.audit_port)


if __name__ == "__main__":
    main()
