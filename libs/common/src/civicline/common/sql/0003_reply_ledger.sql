-- One row per inbound message the responder answers: the reply idempotency record. The row is
-- written ('sending') before the Graph API is called, so a crash in between leaves evidence
-- and the message is never answered twice.
CREATE TABLE reply_ledger (
    inbound_message_id text        PRIMARY KEY,
    phone_number_id    text        NOT NULL,
    recipient          text        NOT NULL,
    state              text        NOT NULL
                       CHECK (state IN ('sending', 'sent', 'failed', 'suppressed')),
    wamid              text,
    error_code         integer,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
