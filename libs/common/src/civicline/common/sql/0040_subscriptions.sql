-- Topic subscriptions (civicline.common.topics), written by the router in the transaction that
-- routes the citizen's message, so the consent evidence is the message itself: its wamid and
-- WhatsApp time (the audit log holds the message as `message.subscribe`). A withdrawal keeps
-- the row (subscribed = false) with the wamid and time it was withdrawn; STOP withdraws all.
CREATE TABLE subscriptions (
    phone_number_id  text        NOT NULL,
    topic            text        NOT NULL,
    citizen          text        NOT NULL,  -- wa_id, or the business-scoped user id
    subscribed       boolean     NOT NULL,
    consented_at     timestamptz,
    consent_wamid    text,
    withdrawn_at     timestamptz,
    withdrawal_wamid text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Campaign expansion walks one topic's subscribers in citizen order (keyset pagination).
    PRIMARY KEY (phone_number_id, topic, citizen)
);
GRANT SELECT, INSERT, UPDATE ON subscriptions TO civicline_writer;
