"""Run the ingress: `civicline-ingress` or `python -m civicline.ingress`."""

from civicline.common.service import run_service
from civicline.ingress.app import create_app


def main() -> None:
    run_service(
        "ingress",
        create_app,
        port=lambda settings: settings.ingress_port,
        require=("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN"),
    )


if __name__ == "__main__":
    main()
