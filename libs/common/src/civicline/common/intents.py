"""The intents the router publishes (`message.<intent>`) and the responder answers: one list,
shared, so the two services cannot drift apart. docs/events.md describes them."""

from __future__ import annotations

from typing import Final

# In the order the help menu presents them.
REPLY_INTENTS: Final = (
    "voting",
    "shelter",
    "health",
    "food_aid",
    "passport",
    "report_abuse",
    "office_hours",
    "help",
    "subscribe",
    "unsubscribe",
    "opt_out",
    "opt_in",
    "unknown",
)
# A reaction is an emoji on one of our messages: answering it would only start a loop.
NO_REPLY_INTENTS: Final = frozenset({"reaction"})
INTENTS: Final = frozenset(REPLY_INTENTS) | NO_REPLY_INTENTS
# Urgency is a promise of the event contract, not a rules-file setting.
URGENT_INTENTS: Final = frozenset({"report_abuse"})
# Topic subscriptions (civicline.common.topics): "SUBSCRIBE FLOOD", or a tap on a row of the
# topic list, whose id is `sub:<topic>` / `unsub:<topic>`.
SUBSCRIPTION_INTENTS: Final = frozenset({"subscribe", "unsubscribe"})
