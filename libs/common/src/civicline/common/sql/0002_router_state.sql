-- Router state: WhatsApp ids already seen (Meta redelivers for days) and what we know of each
-- citizen per business number (language, opt-out, the 24-hour window's last inbound time).
CREATE TABLE router_seen (
    dedup_key     text        PRIMARY KEY,  -- 'message:<wamid>' or 'status:<wamid>:<state>'
    first_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX router_seen_first_seen_idx ON router_seen (first_seen_at);

CREATE TABLE contacts (
    phone_number_id text        NOT NULL,
    citizen         text        NOT NULL,  -- wa_id, or the business-scoped user id
    language        text,
    opted_out       boolean     NOT NULL DEFAULT false,
    opted_out_at    timestamptz,
    last_inbound_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (phone_number_id, citizen)
);
