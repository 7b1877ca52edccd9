-- The away notice (sent outside office hours) goes at most once per conversation: one row per
-- citizen and business number, holding the latest notice. A new notice may be claimed only when
-- the last one is 24 hours old (the customer-service window, reference §6). The row is written
-- ('sending') before the Graph API is called, like reply_ledger, so a crash never sends twice.
CREATE TABLE away_notices (
    phone_number_id    text        NOT NULL,
    citizen            text        NOT NULL,  -- wa_id, or the business-scoped user id
    inbound_message_id text        NOT NULL,  -- the message whose reply the notice followed
    state              text        NOT NULL CHECK (state IN ('sending', 'sent')),
    wamid              text,
    claimed_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (phone_number_id, citizen)
);
