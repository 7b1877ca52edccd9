"""A local stand-in for Meta: the Graph API send endpoint, and signed webhooks as citizens send."""

from civicline.simulator.client import send_citizen_message, send_webhook
from civicline.simulator.server import Simulator, create_app
from civicline.simulator.signing import SIGNATURE_HEADER, sign
from civicline.simulator.state import Fault, RecordedRead, RecordedSend
from civicline.simulator.webhooks import (
    interactive_reply_webhook,
    location_message_webhook,
    message_webhook,
    status_webhook,
    text_message_webhook,
)

__all__ = [
    "SIGNATURE_HEADER",
    "Fault",
    "RecordedRead",
    "RecordedSend",
    "Simulator",
    "create_app",
    "interactive_reply_webhook",
    "location_message_webhook",
    "message_webhook",
    "send_citizen_message",
    "send_webhook",
    "sign",
    "status_webhook",
    "text_message_webhook",
]
