"""Run the responder: `civicline-responder` or `python -m civicline.responder`."""

from civicline.common.service import run_service
from civicline.responder.app import create_app


def main() -> None:
    run_service(
        "responder",
        create_app,
        port=lambda settings: settings.responder_port,
        require=("WHATSAPP_ACCESS_TOKEN",),
    )


if __name__ == "__main__":
    main()
