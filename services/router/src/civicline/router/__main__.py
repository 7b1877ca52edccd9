"""Run the router: `civicline-router` or `python -m civicline.router`."""

from civicline.common.service import run_service
from civicline.router.app import create_app


def main() -> None:
    run_service("router", create_app, port=lambda settings: settings.router_port)


if __name__ == "__main__":
    main()
